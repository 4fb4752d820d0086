"""One proxy process: its event loop, listening socket, ZooKeeper session, clients, timers and shutdown."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import signal
import time
from typing import Any

import structlog

from kvstore_cluster.options import ClusterOptions
from kvstore_cluster.store import ClusterNotFound, ClusterStore, StoreError
from kvstore_cluster.tls import ServerTLS
from kvstore_cluster.zkauth import connect_to_cluster
from kvstore_proxy import inspection, scripting
from kvstore_proxy.acl import UserDirectory
from kvstore_proxy.commands import CommandSpec
from kvstore_proxy.config import ProxyConfig
from kvstore_proxy.datapath import CommandStat, Outbox, Route, command_name
from kvstore_proxy.groupinfo import GroupInfo
from kvstore_proxy.info import worker_snapshot
from kvstore_proxy.latency import LatencyEvents
from kvstore_proxy.limits import Limits
from kvstore_proxy.monitor import Hub
from kvstore_proxy.registry import Registry
from kvstore_proxy.resp3_router import Resp3Router
from kvstore_proxy.router import Router
from kvstore_proxy.session import Session
from kvstore_proxy.siblings import Family, SiblingServer
from kvstore_proxy.stateful import StatefulHub
from kvstore_proxy.stats import OpsMeter, SlowLog, Stats
from kvstore_proxy.topology import Topology, proxy_id

log = structlog.get_logger("kvstore.proxy.server")

_MAX_LEARNED = 4096  # distinct spellings of command names in the fast-route cache


class StartupError(Exception):
    """The proxy cannot start; the message is one line for the user."""


class Worker:
    """Everything one proxy process owns; sessions and backends reach the rest through it."""

    def __init__(self, config: ProxyConfig, loop: asyncio.AbstractEventLoop, family: Family | None = None):
        self.config = config
        self.loop = loop
        self.family = family if family is not None else Family(workers=config.workers)
        self.port = config.port or (config.tls_listen[1] if config.tls_listen else 0)
        self.proxy_id = proxy_id(config.host, self.port)
        # --tls-listen: its own listening socket, the same sessions behind it (tls.py: reloadable)
        self.tls = ServerTLS(config.tls_files) if config.tls_files is not None else None
        self.tls_server: asyncio.base_events.Server | None = None
        self.tls_port = 0
        self._tls_check = 0.0
        self.started_at = time.time()
        self.outbox = Outbox(loop)
        self.router = Router(self.outbox, config.backend_password)
        self.router3 = Resp3Router(self.router, self.outbox)  # what sessions after HELLO 3 route with
        self.stats = Stats()
        self.ops = OpsMeter()
        # The reply path hands SlowLog every request slower than slow_threshold: the slow log's or
        # the latency monitor's (stats.SlowLog). Latency histograms are counted in C (CommandStat).
        self.slowlog = SlowLog(
            config.slowlog_max_len,
            config.slowlog_slower_than / 1e6 if config.slowlog_slower_than >= 0 else math.inf,
            LatencyEvents(config.latency_monitor_threshold))
        self.slow_threshold = self.slowlog.threshold
        self.outbox.latency_tracking = config.latency_tracking
        self.commandstats: dict[str, CommandStat] = {}
        self.routes: dict[bytes, Route] = {}  # command name as sent -> fast route (datapath.Route)
        self.users = UserDirectory(self)  # users, their rules and their routes tables (acl.py)
        self.limits = Limits(config.workers, config.max_clients_per_address, config.max_rps_per_address)
        self._spec_routes: dict[bytes, Route] = {}
        self.clients: dict[int, Session] = {}
        self._next_id = 0
        self.monitoring = False  # a monitor is attached here or in a sibling: see set_monitoring
        self._routes_before_monitor: dict[bytes, Route] = {}
        self.monitor = Hub(self, config.monitor_output_limit)
        self.group_info = GroupInfo(self.router)
        self.tasks: set[asyncio.Task[Any]] = set()  # replies being built (inspection.answer_later)
        self.siblings = SiblingServer(
            self.family, loop,
            one_shot={b"stats": lambda arg: json.dumps(worker_snapshot(self)).encode(),
                      b"latency-reset": lambda arg: json.dumps(
                          inspection.reset_events(self, _event_names(arg))).encode(),
                      b"metrics": lambda arg: json.dumps(_metrics().snapshot(self)).encode()},
            streams={b"monitor": self.monitor.subscribe})
        self.listening = False
        self.topology: Topology | None = None
        self.options = ClusterOptions()  # the cluster options record, applied live (Topology)
        self.keyless_slot = 0  # where EVAL/FCALL with no keys run: the slot of option keyless-tag
        self.registry = Registry()  # scripts and function libraries kept cluster-wide (registry.py)
        self.scripts_loaded: dict[Any, tuple[int, set[bytes]]] = {}  # backend -> (connection, SHAs there)
        self.config_differences: dict[str, tuple[str | None, ...]] = {}  # logged once per set of values
        self.router.preload = scripting.preload(self)
        self.stateful = StatefulHub(self)  # leases, transactions, blocked clients, subscriptions
        self.server: asyncio.base_events.Server | None = None
        self.metrics: Any = None  # metrics.MetricsEndpoint with --metrics-listen
        self._stop = asyncio.Event()
        self._zk: Any = None

    @property
    def slow_threshold(self) -> float:
        """SLOWLOG's threshold in seconds (math.inf: off); kept where the compiled path counts replies."""
        return self.outbox.slow_threshold

    @slow_threshold.setter
    def slow_threshold(self, seconds: float) -> None:
        self.outbox.slow_threshold = seconds

    # --- sessions ---------------------------------------------------------------------------------

    def accept(self, session: Session) -> bool:
        self.stats.connections_received += 1
        if len(self.clients) >= self.config.max_clients or not self.listening:
            self.stats.rejected_connections += 1
            return False
        self._next_id += 1
        session.id = self._next_id
        self.clients[session.id] = session
        return True

    def forget(self, session: Session) -> None:
        self.clients.pop(session.id, None)
        self.monitor.detach(session)

    def stat_for(self, name: bytes) -> CommandStat:
        key = name.decode(errors="replace")
        st = self.commandstats.get(key)
        if st is None:
            st = self.commandstats[key] = CommandStat(key)
        return st

    def route_for(self, spec: CommandSpec) -> Route:
        route = self._spec_routes.get(spec.name)
        if route is None:
            route = self._spec_routes[spec.name] = Route(spec, self.stat_for(spec.name))
        return route

    def learn_route(self, name: bytes, route: Route) -> None:
        if len(self.routes) < _MAX_LEARNED and not self.monitoring:
            name = command_name(name)  # the object the compiled path looks names up with
            self.routes[name] = route
            self.users.learn(name, route)

    def set_monitoring(self, on: bool) -> None:
        """MONITOR's worker-wide switch: with ``routes`` empty (in place: every session holds this
        dict) every request takes Session._slow, where monitors are fed; learning stops meanwhile."""
        if on == self.monitoring:
            return
        self.monitoring = on
        if on:
            self._routes_before_monitor = dict(self.routes)
            self.routes.clear()
            self.users.forget_routes()
        else:
            self.routes.update(self._routes_before_monitor)
            self._routes_before_monitor = {}
        log.info("monitoring", on=on)

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self, sock: Any = None) -> None:
        cfg = self.config
        try:
            self._zk = await self.loop.run_in_executor(None, _connect, cfg)
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        self.topology = Topology(self, self._zk)
        self.topology.start()
        self.registry.start(self.topology.store, self.topology.bridge)
        try:
            await self.siblings.start()
        except OSError as exc:
            raise StartupError(f"cannot open the workers' channel in {self.family.directory}: "
                               f"{exc.strerror or exc}") from None
        try:
            await asyncio.wait_for(self.topology.ready.wait(), max(5.0, cfg.zk_session_timeout))
        except TimeoutError:
            raise StartupError(f"no readable groups/slots tables for cluster {cfg.cluster!r} in ZooKeeper") from None
        try:
            if sock is not None:
                self.server = await self.loop.create_server(lambda: Session(self), sock=sock, backlog=1024)
            elif cfg.port:
                self.server = await self.loop.create_server(
                    lambda: Session(self), cfg.host, cfg.port, backlog=1024,
                    reuse_port=cfg.workers > 1, reuse_address=True)
        except OSError as exc:
            raise StartupError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
        sockets: Any = self.server.sockets if self.server is not None else []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        if self.tls is not None and cfg.tls_listen is not None:
            host, port = cfg.tls_listen
            try:
                self.tls_server = await self.loop.create_server(
                    lambda: Session(self), host, port, ssl=self.tls.context, backlog=1024,
                    reuse_port=cfg.workers > 1, reuse_address=True)
            except OSError as exc:
                raise StartupError(f"cannot listen on {host}:{port} (--tls-listen): {exc.strerror or exc}") from None
            self.tls_port = (self.tls_server.sockets or [None])[0].getsockname()[1]  # type: ignore[union-attr]
            if self.server is None:
                self.port = self.tls_port
        if cfg.metrics_listen is not None:
            self.metrics = _metrics().MetricsEndpoint(self, *cfg.metrics_listen)
            try:
                await self.metrics.start()
            except OSError as exc:
                raise StartupError(f"cannot serve metrics on {cfg.metrics_listen[0]}:{cfg.metrics_listen[1]}: "
                                   f"{exc.strerror or exc}") from None
        self.listening = True
        self.topology.register()
        self._tick()
        log.info("proxy_listening", address=f"{cfg.host}:{self.port}", proxy_id=self.proxy_id,
                 cluster=cfg.cluster, tls=f"{cfg.tls_listen[0]}:{self.tls_port}" if cfg.tls_listen else None)

    def reload_tls(self) -> None:
        """SIGHUP: read the --tls-listen certificate, key and CA again (new connections get them)."""
        if self.tls is not None:
            self.tls.reload()

    def _tick(self) -> None:
        """Per-request timeouts (oldest pending per backend) and idle clients; no timer per request."""
        if not self.listening:
            return
        now = time.monotonic()
        self.ops.sample(now, sum(st.calls for st in self.commandstats.values()))
        if self.monitoring:
            self.monitor.relink()
        if self.tls is not None and now >= self._tls_check:  # a certificate renewed on disk is taken
            self._tls_check = now + 2.0
            self.tls.reload_if_changed()
        timeout = self.config.timeout
        for b in list(self.router.backends.values()) + self.router.retired:
            b.check_timeout(now, timeout)
        idle = self.config.idle_timeout
        if idle > 0:
            for s in list(self.clients.values()):
                # Subscribers are exempt, as from Redis's timeout.
                if not s.fifo and now - s.last_active > idle and (s.state is None or s.state.subs is None):
                    self.stats.idle_closed += 1
                    s.close()
        self.loop.call_later(min(0.1, timeout / 4), self._tick)

    def request_stop(self) -> None:
        self._stop.set()

    async def serve_until_stopped(self) -> None:
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, let replies in flight arrive (bounded), deregister, close everything."""
        log.info("proxy_stopping", clients=len(self.clients))
        if self.server is not None:
            self.server.close()
        if self.tls_server is not None:
            self.tls_server.close()
        self.siblings.close()
        self.monitor.close()
        if self.metrics is not None:
            self.metrics.close()
        self.listening = False
        for s in list(self.clients.values()):
            if s.transport is not None:
                s.transport.pause_reading()
        deadline = time.monotonic() + self.config.drain_timeout
        # A blocked client's reply may never come: it is not waited for.
        while any(s.fifo and (s.state is None or s.state.block is None) for s in self.clients.values()) \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for s in list(self.clients.values()):
            s.close()
        if self.topology is not None:
            await self.loop.run_in_executor(None, self.topology.deregister)
            self.topology.bridge.close()
        self.stateful.close()
        self.router.close()
        if self._zk is not None:
            zk = self._zk
            await self.loop.run_in_executor(None, lambda: (zk.stop(), zk.close()))
        log.info("proxy_stopped")


def _event_names(arg: bytes) -> list[str] | None:
    """LATENCY RESET's event names as a sibling sends them (JSON: a list, or null for all)."""
    names = json.loads(arg) if arg else None
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ValueError("latency-reset wants a JSON list of event names or null")
    return names


def _connect(cfg: ProxyConfig) -> Any:
    client = connect_to_cluster(cfg.zk, cfg.cluster, cfg.zk_credentials, timeout=min(10.0, cfg.zk_session_timeout),
                                session_timeout=cfg.zk_session_timeout)
    store = ClusterStore(client, cfg.cluster, cfg.zk_credentials)
    try:
        if not store.exists():
            raise ClusterNotFound(f"cluster {cfg.cluster!r} does not exist in ZooKeeper at {cfg.zk} "
                                  "(run 'kvstore-admin init')")
    except StoreError:
        client.stop()
        client.close()
        raise
    return client


def run(config: ProxyConfig, sock: Any = None, family: Family | None = None) -> int:
    """Run one proxy (or one worker of ``family``) in this process until SIGTERM/SIGINT; the exit code."""
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency; this only keeps dev setups going
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(config, loop, family)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    loop.add_signal_handler(signal.SIGHUP, worker.reload_tls)
    try:
        loop.run_until_complete(worker.start(sock))
    except StartupError as exc:
        log.error("proxy_start_failed", error=str(exc))
        print(f"kvstore-proxy: {exc}", flush=True, file=__import__("sys").stderr)
        loop.run_until_complete(_abandon(worker))
        loop.close()
        return 2
    # Everything made at start (command table, modules, clients) is never garbage: keep it out of
    # every collection, so a collection costs what was made since, not the whole process.
    gc.freeze()
    try:
        loop.run_until_complete(worker.serve_until_stopped())
    finally:
        loop.close()
    return 0


def _metrics() -> Any:
    """metrics.py, imported only by a proxy that serves metrics (prometheus_client is not free to load)."""
    from kvstore_proxy import metrics

    return metrics


async def _abandon(worker: Worker) -> None:
    if worker.metrics is not None:
        worker.metrics.close()
    worker.siblings.close()
    worker.router.close()
    if worker._zk is not None:
        zk = worker._zk
        await worker.loop.run_in_executor(None, lambda: (zk.stop(), zk.close()))
