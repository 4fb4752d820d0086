"""The cluster's status kept current from ZooKeeper watches, for the web page and its API.

::

    ZooKeeper watches (groups, slots, reshard, proxies/, sentinel-leader/, failover/)
      ─► refresh soon (coalesced)  ─┐
    every --refresh seconds ────────┴─► status.collect (a thread: ZooKeeper reads + node probes)
      ─► a new Snapshot if anything changed ─► every waiting /api/events stream

The sentinels' views (node health) change every probe round, so they are not watched but read
with the periodic refresh, as the nodes' own probes are. While ZooKeeper is unreachable (or a
refresh fails) the last snapshot is kept and marked stale, with the reason and since when.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import structlog
from kazoo.client import KazooClient, KazooState

from kvstore_admin.status import collect
from kvstore_cluster import paths
from kvstore_cluster.store import ClusterStore
from kvstore_cluster.zkbridge import LoopBridge

log = structlog.get_logger("kvstore.admin.web")

COALESCE = 0.1  # seconds: a burst of watch events is one refresh


@dataclass(frozen=True)
class Snapshot:
    """One state of the cluster as the page shows it: ``status --json``'s data plus its freshness."""

    status: dict[str, Any] | None  # None until the first read succeeded
    seq: int  # grows with every change the page should see
    updated_at: float | None  # when ``status`` was read
    stale_since: float | None = None  # set while ZooKeeper is unreachable or reads fail
    stale_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        live = {"seq": self.seq, "updated_at": self.updated_at, "stale": self.stale_since is not None,
                "stale_since": self.stale_since, "stale_reason": self.stale_reason}
        return {**(self.status or {}), "live": live}


class LiveStatus:
    """Owns the refreshes and hands each new snapshot to the waiting streams."""

    def __init__(self, client: KazooClient, cluster: str, loop: asyncio.AbstractEventLoop, refresh: float,
                 node_timeout: float, password: str | None):
        self.client = client
        self.store = ClusterStore(client, cluster)
        self.cluster = cluster
        self.loop = loop
        self.refresh_every = refresh
        self.node_timeout = node_timeout
        self.password = password
        self.bridge = LoopBridge(client, loop)
        self.snapshot = Snapshot(None, 0, None, time.time(), "not read yet")
        self._changed = asyncio.Condition()
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.bridge.watch_state(self._on_state)
        for path in (paths.groups(self.cluster), paths.slots(self.cluster), paths.reshard(self.cluster)):
            self.bridge.watch_data(path, lambda _data, _stat: self._wanted.set())
        for path in (paths.proxies(self.cluster), paths.sentinel_leader(self.cluster),
                     paths.failovers(self.cluster)):
            self._watch_children(path)
        self._task = self.loop.create_task(self._run())

    def close(self) -> None:
        self.bridge.close()
        if self._task is not None:
            self._task.cancel()

    def _watch_children(self, path: str) -> None:
        def on_change(children: list[str] | None = None, event: Any = None) -> bool | None:
            self.loop.call_soon_threadsafe(self._wanted.set)
            return None

        self.client.ChildrenWatch(path, on_change, allow_session_lost=True, send_event=True)

    def _on_state(self, state: KazooState) -> None:
        if state == KazooState.CONNECTED:
            self._wanted.set()
        else:
            self._publish_stale(f"ZooKeeper connection {state.lower()}")

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wanted.wait(), self.refresh_every)
                await asyncio.sleep(COALESCE)
            except TimeoutError:
                pass
            self._wanted.clear()
            await self._refresh()

    async def _refresh(self) -> None:
        if self.client.state != KazooState.CONNECTED:
            self._publish_stale(f"ZooKeeper connection {str(self.client.state).lower()}")
            return
        try:
            status = await asyncio.wait_for(self.loop.run_in_executor(
                None, lambda: collect(self.store, self.node_timeout, self.password)),
                self.node_timeout + 10.0)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the last good status, marked stale
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._publish_stale(f"cannot read the cluster from ZooKeeper ({detail})")
            return
        old = self.snapshot
        if old.status is not None and old.stale_since is None and _same(old.status, status):
            return
        if old.stale_since is not None:
            log.info("web_status_fresh", stale_for=round(time.time() - old.stale_since, 1))
        self._set(Snapshot(status, old.seq + 1, time.time()))

    def _publish_stale(self, reason: str) -> None:
        old = self.snapshot
        if old.stale_since is not None and old.stale_reason == reason:
            return
        log.warning("web_status_stale", reason=reason)
        self._set(Snapshot(old.status, old.seq + 1, old.updated_at, old.stale_since or time.time(), reason))

    def _set(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.loop.create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def changes(self, keepalive: float = 15.0):  # type: ignore[no-untyped-def]
        """Yield the current snapshot as JSON text, then each new one (a repeat as keep-alive)."""
        seq = -1
        while True:
            snap = self.snapshot
            if snap.seq != seq:
                seq = snap.seq
                yield json.dumps(snap.to_json(), sort_keys=True)
                continue
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), keepalive)
                except TimeoutError:
                    seq = -1  # send it again: proxies in between close silent streams


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal but for the ages that grow by themselves (sentinel views' ``age``, probe times)."""
    return _stable(a) == _stable(b)


def _stable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in ("age", "at", "time")}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj
