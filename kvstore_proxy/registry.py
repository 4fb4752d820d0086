"""The worker's copy of the script and function registry (kvstore_cluster/scripts.py), kept by watches.

``scripts`` maps SHA1 (as clients send it, lowercase hex bytes) to body and ``libraries`` name to
code. ``register_script`` / ``put_library`` / ``drop_*`` write ZooKeeper off the loop. A child that
does not decode is logged and left out (that script is then simply not replayed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from kazoo.exceptions import NoNodeError

from kvstore_cluster import paths
from kvstore_cluster.scripts import MAX_BODY, MAX_SCRIPTS, Library, Script
from kvstore_cluster.store import ClusterStore

if TYPE_CHECKING:
    from kvstore_cluster.zkbridge import LoopBridge

log = structlog.get_logger("kvstore.proxy.registry")


class Registry:
    def __init__(self) -> None:
        self.scripts: dict[bytes, bytes] = {}
        self.libraries: dict[str, bytes] = {}
        self.store: ClusterStore | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._registering: set[bytes] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        # Called (on the loop) when the set of libraries changed: connections replay them.
        self.on_libraries: list[Callable[[], None]] = []

    # --- following ZooKeeper ----------------------------------------------------------------------

    def start(self, store: ClusterStore, bridge: LoopBridge) -> None:
        self.store = store
        self.loop = bridge.loop
        self._run(self._watch, bridge)

    def _watch(self, bridge: LoopBridge) -> None:
        """(a thread) Make sure the parents exist, then follow their children."""
        assert self.store is not None
        client = self.store.client
        for parent, on_names in ((paths.scripts(self.store.cluster), self._scripts_changed),
                                 (paths.functions(self.store.cluster), self._libraries_changed)):
            try:
                client.ensure_path(parent)
            except Exception as exc:  # noqa: BLE001 - no replay then, but serving goes on
                log.error("registry_unavailable", path=parent, error=str(exc) or type(exc).__name__)
                continue
            bridge.watch_children(parent, on_names)

    def _scripts_changed(self, names: list[str]) -> None:
        wanted = {n.encode() for n in names}
        for sha in list(self.scripts):
            if sha not in wanted:
                del self.scripts[sha]
        missing = [n for n in names if n.encode() not in self.scripts]
        if missing:
            self._run(self._read, paths.scripts, Script.decode, missing, self._got_scripts)

    def _libraries_changed(self, names: list[str]) -> None:
        for name in list(self.libraries):
            if name not in names:
                del self.libraries[name]
        # Every library again: a replaced library keeps its name.
        self._run(self._read, paths.functions, Library.decode, list(names), self._got_libraries)

    def _read(self, parent: Callable[[str], str], decode: Any, names: list[str],
              then: Callable[[dict[str, Any]], None]) -> None:
        assert self.store is not None and self.loop is not None
        base = parent(self.store.cluster)
        out: dict[str, Any] = {}
        for name in names:
            found = self.store.read_named(f"{base}/{name}", name, decode)
            if isinstance(found, str):
                log.error("registry_entry_rejected", path=f"{base}/{name}", error=found)
            elif found is not None:
                out[name] = found
        self.loop.call_soon_threadsafe(then, out)

    def _got_scripts(self, found: dict[str, Script]) -> None:
        for name, script in found.items():
            self.scripts[name.encode()] = script.body

    def _got_libraries(self, found: dict[str, Library]) -> None:
        changed = any(self.libraries.get(n) != lib.code for n, lib in found.items())
        for name, lib in found.items():
            self.libraries[name] = lib.code
        if changed:
            for listener in self.on_libraries:
                listener()

    # --- writing ------------------------------------------------------------------------------------

    def register_script(self, sha: bytes, body: bytes) -> None:
        """Keep ``body`` cluster-wide (once; bounded), so EVALSHA works on groups that never saw it."""
        if sha in self.scripts or sha in self._registering or self.store is None:
            return
        if len(body) > MAX_BODY or len(self.scripts) >= MAX_SCRIPTS:
            log.warning("script_not_registered", sha=sha.decode(), bytes=len(body), scripts=len(self.scripts),
                        reason=f"bodies over {MAX_BODY} bytes and scripts past {MAX_SCRIPTS} are not kept")
            return
        self.scripts[sha] = body  # this worker replays it at once; the watch confirms it
        self._registering.add(sha)
        self._run(self._register, sha, body)

    def _register(self, sha: bytes, body: bytes) -> None:
        assert self.store is not None
        try:
            self.store.register_script(Script(body))
        except Exception as exc:  # noqa: BLE001 - the script still runs; it is just not kept
            log.error("script_not_registered", sha=sha.decode(), error=str(exc) or type(exc).__name__)
        finally:
            self._registering.discard(sha)

    def drop_scripts(self) -> asyncio.Future[Any]:
        self.scripts.clear()
        assert self.store is not None
        return self._run(self.store.clear_registry, paths.scripts(self.store.cluster))

    def put_library(self, name: str, code: bytes) -> asyncio.Future[Any]:
        self.libraries[name] = code
        assert self.store is not None
        return self._run(self.store.put_library, name, Library(code))

    def delete_library(self, name: str) -> asyncio.Future[Any]:
        self.libraries.pop(name, None)
        assert self.store is not None
        return self._run(self.store.delete_library, name)

    def drop_libraries(self) -> asyncio.Future[Any]:
        self.libraries.clear()
        assert self.store is not None
        return self._run(self.store.clear_registry, paths.functions(self.store.cluster))

    def _run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        assert self.loop is not None
        future = self.loop.run_in_executor(None, fn, *args)
        self._tasks.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: asyncio.Future[Any]) -> None:
        self._tasks.discard(future)
        exc = future.exception() if not future.cancelled() else None
        if exc is not None and not isinstance(exc, NoNodeError):
            log.error("registry_write_failed", error=str(exc) or type(exc).__name__)
