"""One sentinel process: probe every round, publish its view, contend for leadership, act when leader.

```
probe loop (every interval)          election (kazoo Lock layout)       leader loop (after each round)
  read groups ──► probe all nodes      contend on sentinel-leader/        if fence.acting:
  ──► publish sentinels/<id>           fence granted / revoked ────────►   read sentinels/ views
  ──► wake the leader loop                                                  quorum ──► Leader.tick()
```
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from kazoo.client import KazooState
from kazoo.exceptions import KazooException

from kvstore_cluster import paths
from kvstore_cluster.failover_record import FailoverRecord
from kvstore_cluster.model import Groups, Meta
from kvstore_cluster.ops.context import Context
from kvstore_cluster.ops.fence import Fenced
from kvstore_cluster.reshard_state import ReshardState
from kvstore_cluster.sentinel_view import fresh_views
from kvstore_cluster.store import ClusterNotFound, ClusterStore, CorruptData, StoreError
from kvstore_cluster.zkauth import ZkCredentials, connect_to_cluster
from kvstore_sentinel.background_rebalance import BackgroundRebalance
from kvstore_sentinel.election import Leadership
from kvstore_sentinel.leader import Leader
from kvstore_sentinel.probe import Prober
from kvstore_sentinel.quorum import build_view, objectively_down

log = structlog.get_logger("kvstore.sentinel")


@dataclass(frozen=True)
class Config:
    zk: str
    cluster: str
    interval: float = 0.5
    down_after: float = 2.0
    quorum: int = 1
    sentinel_id: str = ""
    auto_rejoin: bool = False
    zk_session_timeout: float = 6.0
    password: str | None = None
    metrics_listen: tuple[str, int] | None = None  # where /metrics is served (metrics.py); None: nowhere
    zk_credentials: ZkCredentials | None = field(default=None, repr=False)  # kvstore_cluster.zkauth

    @property
    def probe_timeout(self) -> float:
        # A probe slower than the interval would overlap the next round; a paused node answers never.
        return max(0.05, min(self.interval, 1.0))

    @property
    def stale_after(self) -> float:
        """A published view older than this no longer votes."""
        return max(3 * self.interval + self.down_after, 3.0)


class StartupError(Exception):
    """The sentinel cannot start; the message is one line for the user."""


@dataclass
class Progress:
    """The failovers and the reshard in progress, as last read from ZooKeeper (for the metrics)."""

    failovers: dict[str, FailoverRecord] = field(default_factory=dict)
    reshard: ReshardState | None = None
    read_at: float | None = None  # time.time() of the last round that read groups and these


def default_id() -> str:
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}"


class Sentinel:
    def __init__(self, config: Config):
        self.config = config
        self.id = config.sentinel_id or default_id()
        self.prober = Prober(config.probe_timeout, config.down_after, config.password)
        self._round = asyncio.Event()
        self._groups: Groups | None = None
        self._said: dict[str, str] = {}
        self._bad_views: dict[str, str] = {}  # sentinel id -> why its published view is unreadable
        self._down: set[str] = set()  # nodes we last reported down, to log transitions once
        self.mode = "?"
        self.rounds = 0
        self.progress = Progress()
        self.leadership: Leadership | None = None
        self.client: Any = None

    def _say_once(self, event: str, message: str | None, **fields: object) -> None:
        """Log ``event`` when its message changes (so a persistent fault is one line, not one per round)."""
        if message is None:
            if self._said.pop(event, None) is not None:
                log.info(f"{event}_cleared", **fields)
            return
        if self._said.get(event) != message:
            self._said[event] = message
            log.error(event, error=message, **fields)

    async def run(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        self.client = await loop.run_in_executor(
            None, lambda: connect_to_cluster(cfg.zk, cfg.cluster, cfg.zk_credentials, timeout=10.0,
                                             session_timeout=cfg.zk_session_timeout))
        self.store = ClusterStore(self.client, cfg.cluster, cfg.zk_credentials)
        self.ctx = Context(self.store, node_timeout=max(1.0, cfg.down_after), password=cfg.password,
                           actor=self.id, zk_timeout=cfg.zk_session_timeout)
        endpoint = await self._serve_metrics() if cfg.metrics_listen is not None else None
        meta = await self._wait_for_meta()
        self.mode = meta.mode
        self.leadership = Leadership(self.client, paths.sentinel_leader(cfg.cluster), self.id, loop)
        fence = self.leadership.fence
        self.rebalance = BackgroundRebalance(self.store, fence, cfg.password) if cfg.auto_rejoin else None
        self.leader = Leader(self.ctx, fence, self.prober, meta.mode, cfg.auto_rejoin, stable_for=cfg.down_after,
                             rebalance=self.rebalance)
        log.info("sentinel_started", id=self.id, cluster=cfg.cluster, mode=meta.mode, interval=cfg.interval,
                 down_after=cfg.down_after, quorum=cfg.quorum, auto_rejoin=cfg.auto_rejoin)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(t) for t in (self.leadership.run(), self._probe_loop(), self._leader_loop())]
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stopper and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in (*tasks, stopper):
                t.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
            if endpoint is not None:
                endpoint.close()
            await self.prober.close()
            if self.rebalance is not None:
                await self.rebalance.close()
            await self.leadership.resign()
            await loop.run_in_executor(None, self._close_zk)
            log.info("sentinel_stopped", id=self.id)

    async def _serve_metrics(self) -> Any:
        from kvstore_sentinel.metrics import MetricsEndpoint, SentinelMetrics

        assert self.config.metrics_listen is not None
        metrics = SentinelMetrics(self)
        self.ctx.observers.append(metrics.observe)
        endpoint = MetricsEndpoint(metrics, *self.config.metrics_listen)
        try:
            await endpoint.start()
        except OSError as exc:
            await self.ctx.zk(self._close_zk)
            host, port = self.config.metrics_listen
            raise StartupError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        log.info("metrics_listening", address=f"{self.config.metrics_listen[0]}:{endpoint.http.port}")
        return endpoint

    # --- what the metrics read ----------------------------------------------------------------

    @property
    def groups(self) -> Groups | None:
        return self._groups

    def is_leader(self) -> bool:
        return self.leadership is not None and self.leadership.fence.acting

    def elections(self) -> int:
        return self.leadership.elected if self.leadership is not None else 0

    def zk_connected(self) -> bool:
        return self.client is not None and self.client.state == KazooState.CONNECTED

    def _close_zk(self) -> None:
        self.client.stop()
        self.client.close()

    async def _wait_for_meta(self) -> Meta:
        while True:
            try:
                return (await self.ctx.zk(self.store.read_meta)).value
            except (StoreError, TimeoutError) as exc:
                self._say_once("cluster_unreadable", str(exc) or type(exc).__name__, cluster=self.config.cluster)
            await asyncio.sleep(1.0)

    async def _read_groups(self) -> Groups | None:
        """The current groups, or the last good ones when ZooKeeper is away or the znode is garbage."""
        if self.client.state != KazooState.CONNECTED:
            return self._groups
        try:
            self._groups = (await self.ctx.zk(self.store.read_groups)).value
            self._say_once("groups_unreadable", None)
            await self._read_progress()
        except (StoreError, KazooException, TimeoutError) as exc:
            # ClusterStore lets kazoo's ConnectionLoss & co. through; a flaky link is not a crash.
            self._say_once("groups_unreadable", f"{type(exc).__name__}: {exc}",
                           action="probing the last good groups")
        return self._groups

    async def _read_progress(self) -> None:
        """The failover and reshard records, for the metrics (unreadable ones: left out, logged by their readers)."""
        try:
            failovers = (await self.ctx.zk(self.store.failovers)).items
            reshard = await self.ctx.zk(self.store.read_reshard)
        except CorruptData:
            reshard = None
        self.progress = Progress(dict(failovers), reshard.value if reshard is not None else None, time.time())

    async def _probe_loop(self) -> None:
        interval = self.config.interval
        while True:
            started = time.monotonic()
            try:
                await self._probe_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - probing must go on whatever one round hit
                log.exception("probe_round_crashed", error=f"{type(exc).__name__}: {exc}")
            self.rounds += 1
            self._round.set()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _probe_round(self) -> None:
        """Probe every node once, log transitions, publish our view."""
        groups = await self._read_groups()
        if groups is not None:
            await self.prober.set_nodes({n for g in groups for n in g.nodes})
        was_down = self._down & set(self.prober.nodes)
        for result, previous in await self.prober.probe_all():
            if not result.ok and (previous is None or previous.ok):
                log.warning("node_probe_failed", node=result.address, error=result.error)
            elif result.ok and previous is not None and not previous.ok:
                log.info("node_answering", node=result.address, role=result.role)
        now_down = self._down = set(self.prober.down_nodes())
        for addr in sorted(now_down - was_down):
            health = self.prober.nodes[addr]
            log.warning("node_down", node=addr, error=health.last.error if health.last else None)
        for addr in sorted(was_down - now_down):
            if addr in self.prober.nodes:
                log.info("node_up", node=addr)
        await self._publish()

    async def _publish(self) -> None:
        if self.client.state != KazooState.CONNECTED:
            return
        view = build_view(self.id, self.prober, self.is_leader())
        try:
            await self.ctx.zk(self.store.publish_view, view)
            self._say_once("publish_failed", None)
        except (StoreError, TimeoutError, Exception) as exc:  # noqa: BLE001 - keep probing whatever ZK says
            self._say_once("publish_failed", f"{type(exc).__name__}: {exc}")

    async def _verdict(self) -> set[str]:
        views = await self.ctx.zk(self.store.sentinel_views)
        for sid, error in views.malformed.items():
            if self._bad_views.get(sid) != error:
                log.error("view_unreadable", sentinel=sid, error=error, action="its votes are not counted")
        for sid in self._bad_views.keys() - views.malformed.keys():
            log.info("view_unreadable_cleared", sentinel=sid)
        self._bad_views = dict(views.malformed)
        # Our own view is fresher in memory than in ZooKeeper.
        views.items[self.id] = build_view(self.id, self.prober, True)
        fresh = fresh_views(views.items, self.config.stale_after)
        return set(objectively_down(fresh, self.config.quorum))

    async def _leader_loop(self) -> None:
        while True:
            await self._round.wait()
            self._round.clear()
            if not self.is_leader():
                continue
            try:
                down = await self._verdict()
                await self.leader.tick(down)
                self._say_once("leader_round_failed", None)
            except Fenced:
                log.warning("leader_action_fenced", reason="leadership suspended or lost mid-round")
            except ClusterNotFound as exc:
                self._say_once("leader_round_failed", str(exc))
            except (StoreError, TimeoutError) as exc:
                self._say_once("leader_round_failed", f"{type(exc).__name__}: {exc}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the sentinel must outlive any one bad round
                log.exception("leader_round_crashed", error=f"{type(exc).__name__}: {exc}")
