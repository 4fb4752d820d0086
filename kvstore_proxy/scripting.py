"""Lua scripts and functions on every group: SCRIPT and FUNCTION answered for the cluster, EVALSHA kept working.

- Every script a client loads or runs (SCRIPT LOAD, EVAL) is registered cluster-wide
  (registry.py). Before the first EVALSHA of a registered script on a backend connection, the
  proxy sends it SCRIPT LOAD in the same pipeline, so a group added later, a new master after a
  failover or a restarted node never answers NOSCRIPT for it; should one still do (its cache
  flushed behind the proxy's back), the proxy loads the script and sends the EVALSHA again, and
  the client sees only its result.
- SCRIPT LOAD / EXISTS / FLUSH / KILL act on every group.
- Function libraries are identical on every group: FUNCTION LOAD / DELETE / FLUSH / RESTORE go
  to every group and to the registry, and every new connection to a master loads each
  registered library first (``preload``). FUNCTION LIST / DUMP / STATS are answered by one group.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import hiredis
import structlog

from kvstore_cluster.scripts import library_name
from kvstore_proxy import resp
from kvstore_proxy.backend import Backend
from kvstore_proxy.clientstate import Step
from kvstore_proxy.datapath import CommandStat, Reply
from kvstore_proxy.split_reply import Merge, Part, SplitReply

if TYPE_CHECKING:
    from kvstore_proxy.server import Worker
    from kvstore_proxy.session import Session

log = structlog.get_logger("kvstore.proxy.scripting")

EVAL = frozenset({b"eval", b"eval_ro"})
EVALSHA = frozenset({b"evalsha", b"evalsha_ro"})
_NOSCRIPT = b"-NOSCRIPT"


def _ignore(_raw: bytes) -> None:
    return None


# --- EVAL and EVALSHA ----------------------------------------------------------------------------------


def loaded(worker: Worker, backend: Backend) -> set[bytes]:
    """The scripts this worker knows to be in the cache behind ``backend``'s current connection."""
    found = worker.scripts_loaded.get(backend)
    if found is None or found[0] != backend.connects:
        found = worker.scripts_loaded[backend] = (backend.connects, set())
    return found[1]


def forward(s: Session, name: bytes, target: Any, r: Reply, raw: bytes, args: list[bytes]) -> None:
    """Send an EVAL/EVALSHA (and _RO) to ``target``, its slot's entry, keeping the script replayable."""
    worker = s.worker
    if name in EVAL:
        body = args[1]
        sha = hashlib.sha1(body).hexdigest().encode()
        worker.registry.register_script(sha, body)
        if isinstance(target, Backend) and target.up:
            loaded(worker, target).add(sha)  # EVAL caches it there
        target.send(r, raw)
        return
    sha = args[1].lower()
    body = worker.registry.scripts.get(sha)
    if body is None:
        target.send(r, raw)  # not registered: nothing to load it with
        return
    if isinstance(target, Backend) and target.up:
        cache = loaded(worker, target)
        if sha not in cache:
            target.send(Step(_ignore), resp.command([b"SCRIPT", b"LOAD", body]))
            cache.add(sha)
    target.send(_Repaired(r, target, body, raw), raw)


def loads_for(worker: Worker, raws: list[bytes]) -> list[bytes]:
    """SCRIPT LOAD of each registered script the EVALSHAs among ``raws`` run (a transaction's, sent on a
    lease: a connection of its own, to a master that may never have seen them)."""
    registry = worker.registry.scripts
    out: list[bytes] = []
    if not registry:
        return out
    for raw in raws:
        if b"evalsha" not in raw[:24].lower():
            continue
        reader = hiredis.Reader()
        reader.feed(raw)
        args = reader.gets()
        if isinstance(args, list) and len(args) > 1 and args[0].lower() in EVALSHA:
            body = registry.get(args[1].lower())
            if body is not None:
                out.append(resp.command([b"SCRIPT", b"LOAD", body]))
    return out


class _Repaired:
    """A backend FIFO entry standing for an EVALSHA's Reply: a NOSCRIPT is repaired, not delivered."""

    __slots__ = ("r", "target", "body", "raw", "t0")

    def __init__(self, r: Reply, target: Any, body: bytes | None, raw: bytes):
        self.r = r
        self.target = target
        self.body = body
        self.raw = raw
        self.t0 = r.t0

    @property
    def session(self) -> Any:
        return self.r.session

    @property
    def args(self) -> list[bytes]:
        return self.r.args  # type: ignore[no-any-return]

    def done(self, raw: bytes | bytearray) -> Any:
        if raw.startswith(_NOSCRIPT) and self.body is not None:
            log.info("noscript_repaired", sha=hashlib.sha1(self.body).hexdigest())
            target, body, self.body = self.target, self.body, None  # once: a second NOSCRIPT is the answer
            target.send(Step(_ignore), resp.command([b"SCRIPT", b"LOAD", body]))
            target.send(self, self.raw)
            return None
        if self.r.data is None:
            self.r.data = bytes(raw)
        return self.r

    def fail(self, err: bytes) -> Any:
        return self.r.fail(err)


# --- SCRIPT ----------------------------------------------------------------------------------------------


class _AllReplies(SplitReply):
    """Like a fan-out's reply, but ``merge`` sees every group's result, errors included."""

    __slots__ = ()

    def part_done(self, index: int, value: Any) -> Reply | None:
        self.results[index] = value
        self.left -= 1
        if self.left:
            return None
        if self.data is None:
            try:
                self.data = self.merge(self.results)
            except Exception as exc:  # noqa: BLE001 - a surprising reply must not kill the loop
                log.exception("merge_failed", command=self.stat.name)
                self.data = resp.error(f"ERR kvstore could not merge replies: {exc}")
        return self


def broadcast(s: Session, args: list[bytes], stat: CommandStat, t0: float, merge: Merge,
              requests: list[bytes] | None = None) -> bytes | None:
    """Send ``requests`` (default: the command itself) to every group's master now, in one go per
    group, ahead of anything the client sends next; ``merge`` gets one result per group (the last
    request's reply, or the first error among them)."""
    backends = s.worker.router.all_backends()
    if not backends:
        return resp.error("CLUSTERDOWN the cluster has no groups")
    raws = requests or [resp.command(args)]
    parent = _AllReplies(s, t0, stat, args, len(backends), merge)
    s.fifo.append(parent)
    for i, b in enumerate(backends):
        for raw in raws[:-1]:
            b.send(Step(_ignore), raw)
        b.send(Part(parent, i), raws[-1])
    return None


def _errors(results: list[Any]) -> list[str]:
    return [str(r) for r in results if isinstance(r, hiredis.ReplyError)]


def _script_load(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    body = args[2]
    sha = hashlib.sha1(body).hexdigest().encode()

    def merge(results: list[Any]) -> bytes:
        errors = _errors(results)
        if len(errors) < len(results):
            s.worker.registry.register_script(sha, body)  # the groups that failed get it before its next EVALSHA
        return resp.error(errors[0]) if errors else resp.bulk(sha)

    for b in s.worker.router.backends.values():
        loaded(s.worker, b).add(sha)  # the request ahead of any later EVALSHA loads it there
    return broadcast(s, args, stat, t0, merge)


def _script_exists(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    """1 for a script every group has, or that is registered (then loaded wherever it runs)."""
    shas = [a.lower() for a in args[2:]]
    registered = s.worker.registry.scripts

    def merge(results: list[Any]) -> bytes:
        errors = _errors(results)
        if errors:
            return resp.error(errors[0])
        return resp.array([resp.integer(int(sha in registered or all(r[i] for r in results)))
                           for i, sha in enumerate(shas)])

    return broadcast(s, args, stat, t0, merge)


def _flush_option(args: list[bytes], what: str) -> bytes | None:
    if len(args) > 3 or (len(args) == 3 and args[2].lower() not in (b"async", b"sync")):
        return resp.error(f"ERR {what} FLUSH only support SYNC|ASYNC option")
    return None


def _script_flush(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    refused = _flush_option(args, "SCRIPT")
    if refused is not None:
        return refused
    s.worker.registry.drop_scripts()
    s.worker.scripts_loaded.clear()
    return broadcast(s, args, stat, t0, _ok_or_first_error)


def _ok_or_first_error(results: list[Any]) -> bytes:
    errors = _errors(results)
    return resp.error(errors[0]) if errors else resp.OK


def _kill(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    """SCRIPT KILL, FUNCTION KILL: OK if some group was running a script and stopped it."""

    def merge(results: list[Any]) -> bytes:
        errors = _errors(results)
        if len(errors) < len(results):
            return resp.OK
        busy = [e for e in errors if not e.startswith("NOTBUSY")]
        return resp.error(busy[0] if busy else errors[0])

    return broadcast(s, args, stat, t0, merge)


# --- FUNCTION ------------------------------------------------------------------------------------------


def preload(worker: Worker) -> Any:
    """What a fresh connection to a master sends first: FUNCTION LOAD REPLACE of every registered library."""

    def first(backend: Backend) -> list[tuple[Any, bytes]]:
        return [(Step(_loaded_or_logged(backend, name)), resp.command([b"FUNCTION", b"LOAD", b"REPLACE", code]))
                for name, code in sorted(worker.registry.libraries.items())]

    return first


def _loaded_or_logged(backend: Backend, name: str) -> Any:
    def done(raw: bytes) -> None:
        if raw[:1] == b"-":
            log.error("function_library_not_loaded", group=backend.group, addr=backend.address, library=name,
                      error=raw[1:].strip().decode(errors="replace"))
    return done


def _function_load(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    replace = False
    for opt in args[2:-1]:
        if opt.lower() != b"replace":
            return resp.error(f"ERR Unknown option given: {opt.decode(errors='replace')}")
        replace = True
    code = args[-1]
    name = library_name(code)
    registry = s.worker.registry
    if name is not None and name in registry.libraries and not replace:
        return resp.error(f"ERR Library '{name}' already exists")

    def merge(results: list[Any]) -> bytes:
        errors = _errors(results)
        if name is not None and len(errors) < len(results):
            registry.put_library(name, code)  # a group that failed gets it when it reconnects
        return resp.error(errors[0]) if errors else resp.bulk(results[0])

    # REPLACE on every group: the registry says what exists, a group's leftovers do not.
    return broadcast(s, args, stat, t0, merge, [resp.command([b"FUNCTION", b"LOAD", b"REPLACE", code])])


def _function_delete(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    name = args[2].decode(errors="replace")
    registry = s.worker.registry

    def merge(results: list[Any]) -> bytes:
        errors = _errors(results)
        if name in registry.libraries or len(errors) < len(results):
            registry.delete_library(name)
            return resp.OK
        return resp.error(errors[0])

    return broadcast(s, args, stat, t0, merge)


def _function_flush(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    refused = _flush_option(args, "FUNCTION")
    if refused is not None:
        return refused
    s.worker.registry.drop_libraries()
    return broadcast(s, args, stat, t0, _ok_or_first_error)


def _function_restore(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    if len(args) > 4 or (len(args) == 4 and args[3].lower() not in (b"flush", b"append", b"replace")):
        return resp.error("ERR Wrong restore policy given, value should be either FLUSH, APPEND or REPLACE.")

    def merge(results: list[Any]) -> bytes:
        errors = _errors(results)
        if len(errors) < len(results):
            # What the restore made is what a group lists now: the registry follows it.
            backends = s.worker.router.all_backends()
            good = next(b for b, r in zip(backends, results, strict=True) if not isinstance(r, hiredis.ReplyError))
            good.send(Step(lambda raw: _sync_registry(s, resp.parse_one(raw))),
                      resp.command([b"FUNCTION", b"LIST", b"WITHCODE"]))
        return resp.error(errors[0]) if errors else resp.OK

    return broadcast(s, args, stat, t0, merge)


def _sync_registry(s: Session, listing: Any) -> None:
    """Make the registry hold exactly the libraries of a FUNCTION LIST WITHCODE reply."""
    libraries: dict[str, bytes] = {}
    for lib in listing or ():
        fields = dict(zip(lib[::2], lib[1::2], strict=False)) if isinstance(lib, list) else lib
        name, code = fields.get(b"library_name"), fields.get(b"library_code")
        if isinstance(name, bytes) and isinstance(code, bytes):
            libraries[name.decode()] = code
    registry = s.worker.registry
    for name in set(registry.libraries) - set(libraries):
        registry.delete_library(name)
    for name, code in libraries.items():
        if registry.libraries.get(name) != code:
            registry.put_library(name, code)


def _from_one_group(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> None:
    """FUNCTION LIST / DUMP / STATS: the libraries are the same everywhere; the keyless scripts' group answers."""
    r = Reply(s, t0, stat, args)
    s.fifo.append(r)
    s.router.slot_backend[s.worker.keyless_slot].send(r, resp.command(args))


HANDLERS: dict[bytes, Any] = {
    b"script|load": _script_load, b"script|exists": _script_exists, b"script|flush": _script_flush,
    b"script|kill": _kill,
    b"function|load": _function_load, b"function|delete": _function_delete, b"function|flush": _function_flush,
    b"function|restore": _function_restore, b"function|kill": _kill,
    b"function|list": _from_one_group, b"function|dump": _from_one_group, b"function|stats": _from_one_group,
}

