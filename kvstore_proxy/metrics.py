"""``--metrics-listen``: the whole proxy's figures in Prometheus text format, read at scrape time.

Nothing is counted for this module on the request path: a scrape reads the counters the proxy
keeps anyway (INFO's commandstats and errorstats, connections, backends, leases, table versions,
the migration counters of the router) from every worker and adds them up:

    GET /metrics ─► any worker (the port is shared with SO_REUSEPORT, like the client port)
        ─► its own snapshot + each sibling's over the workers' channel (siblings.py "metrics")
        ─► one family per figure (prometheus_client), summed over the workers

So one scrape answers for every worker, whichever worker the kernel hands it to; a worker that
does not answer within a second is left out and counted in ``kvstore_proxy_workers_missing``.
Request latency is a histogram per command, from the same counts as INFO latencystats (counted in
C with every reply); with ``--no-latency-tracking`` it is a summary (count and sum per command).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from kvstore_cluster.httpserve import PROMETHEUS_TEXT, HttpServer, Request, Response
from kvstore_proxy import siblings
from kvstore_proxy.info import PROXY_VERSION, ProxyFigures, parse_snapshot, worker_snapshot

if TYPE_CHECKING:
    from kvstore_proxy.server import Worker

# Bucket bounds of the latency histogram, in seconds (from 100 µs, Redis's usual range, to 10 s).
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BACKEND_STATES = ("up", "connecting", "down", "idle")
TABLES = ("groups", "slots", "options", "keyrules")


def snapshot(w: Worker) -> dict[str, Any]:
    """One worker's figures as JSON-able data: INFO's snapshot plus what only metrics show."""
    snap = worker_snapshot(w)
    router = w.router
    topology = w.topology
    pool = w.stateful.pool
    snap["metrics"] = {
        "backends": [{"group": b.group, "address": b.address, "state": b.state, "pending": len(b.fifo),
                      "connects": b.connects, "failures": b.failures} for b in router.backends.values()],
        "applied": {"groups": router.groups_version, "slots": router.slots_version,
                    "options": topology.options_version if topology is not None else -1,
                    "keyrules": router.keyrules_version},
        "seen": dict(topology.seen) if topology is not None else {},
        "fenced": router.fenced,
        "zk_connected": topology is not None and topology.state == "connected",
        "leases_total": len(pool.leases),
        "leases_idle": sum(len(v) for v in pool.idle.values()),
        "migrations_on_access": router.migrations_on_access,
        "keys_migrated_on_access": router.keys_migrated_on_access,
        "migration_tryagain": router.migration_tryagain,
        "requests_held": router.requests_held,
        "started_at": w.started_at,
    }
    return snap


def _parse(raw: bytes | None) -> dict[str, Any] | None:
    """A sibling's ``metrics`` reply, or None if it is not one (then the sibling counts as missing)."""
    snap = parse_snapshot(raw)
    return snap if snap is not None and isinstance(snap.get("metrics"), dict) else None


async def gather(w: Worker) -> tuple[list[dict[str, Any]], list[int]]:
    """Every worker's snapshot (this one first) and the indexes of the siblings that did not answer."""
    snaps = [snapshot(w)]
    missing = []
    for index, raw in (await siblings.ask(w.family, b"metrics")).items():
        snap = _parse(raw)
        if snap is None:
            missing.append(index)
        else:
            snaps.append(snap)
    return snaps, missing


class ProxyCollector:
    """The metric families of one scrape, from the workers' snapshots (a prometheus_client collector)."""

    def __init__(self, snaps: list[dict[str, Any]], missing: list[int]):
        self.snaps = snaps
        self.missing = missing

    def collect(self) -> Iterator[Metric]:
        snaps = self.snaps
        m = [s["metrics"] for s in snaps]
        yield from self._requests(snaps)
        yield _counter("kvstore_proxy_errors", "Error replies sent to clients, by error code (INFO errorstats).",
                       ["kind"], _sum_dicts(s["errors"] for s in snaps))
        yield _gauge("kvstore_proxy_connected_clients", "Client connections open.", _total(snaps, "clients"))
        yield _gauge("kvstore_proxy_blocked_clients", "Clients waiting in a blocking command.",
                     _total(snaps, "blocked"))
        yield _counter("kvstore_proxy_connections_received", "Client connections accepted or refused.", [],
                       {(): _total(snaps, "connections_received")})
        yield _counter("kvstore_proxy_connections_rejected", "Client connections refused (--max-clients).", [],
                       {(): _total(snaps, "rejected_connections")})
        yield _counter("kvstore_proxy_protocol_errors", "Clients disconnected for a protocol error.", [],
                       {(): _total(snaps, "protocol_errors")})
        yield _counter("kvstore_proxy_idle_disconnects", "Clients closed by --idle-timeout.", [],
                       {(): _total(snaps, "idle_closed")})
        yield from self._backends(m)
        leased = GaugeMetricFamily("kvstore_proxy_leased_connections",
                                   "Backend connections leased to clients (transactions, blocking, pub/sub), "
                                   "by state.", labels=["state"])
        idle = sum(x["leases_idle"] for x in m)
        leased.add_metric(["lent"], sum(x["leases_total"] for x in m) - idle)
        leased.add_metric(["idle"], idle)
        yield leased
        yield _counter("kvstore_proxy_migrations_on_access",
                       "MIGRATE commands sent to move the keys of a request in a migrating slot.", [],
                       {(): sum(x["migrations_on_access"] for x in m)})
        yield _counter("kvstore_proxy_keys_migrated_on_access",
                       "Keys a request moved to its slot's new group (MIGRATE answered OK or NOKEY).", [],
                       {(): sum(x["keys_migrated_on_access"] for x in m)})
        yield _counter("kvstore_proxy_migration_tryagain",
                       "Requests answered TRYAGAIN because their slot was held for a reshard's barrier.", [],
                       {(): sum(x["migration_tryagain"] for x in m)})
        yield _counter("kvstore_proxy_requests_held",
                       "Requests held (not refused) until a reshard's barrier let their slot move.", [],
                       {(): sum(x["requests_held"] for x in m)})
        yield from self._tables(m)
        yield _gauge("kvstore_proxy_fenced_workers", "Workers refusing keyed commands: cut off from ZooKeeper.",
                     sum(1 for x in m if x["fenced"]))
        yield _gauge("kvstore_proxy_zookeeper_connected_workers", "Workers whose ZooKeeper session is connected.",
                     sum(1 for x in m if x["zk_connected"]))
        yield _gauge("kvstore_proxy_workers", "Workers that answered this scrape.", len(snaps))
        yield _gauge("kvstore_proxy_workers_missing", "Workers that did not answer this scrape within a second.",
                     len(self.missing))
        cpu = CounterMetricFamily("kvstore_proxy_cpu_seconds", "CPU time of the workers, by mode.", labels=["mode"])
        cpu.add_metric(["system"], sum(s["cpu"][0] for s in snaps))
        cpu.add_metric(["user"], sum(s["cpu"][1] for s in snaps))
        yield cpu
        yield _gauge("kvstore_proxy_start_time_seconds", "When the oldest answering worker started (Unix time).",
                     min(x["started_at"] for x in m))
        info = GaugeMetricFamily("kvstore_proxy_build_info", "The proxy's version (always 1).", labels=["version"])
        info.add_metric([PROXY_VERSION], 1)
        yield info

    def _requests(self, snaps: list[dict[str, Any]]) -> Iterable[Metric]:
        calls: dict[tuple[str, ...], float] = {}
        seconds: dict[tuple[str, ...], float] = {}
        errors: dict[tuple[str, ...], float] = {}
        for s in snaps:
            for name, (n, secs, errs) in s["commands"].items():
                calls[(name,)] = calls.get((name,), 0) + n
                seconds[(name,)] = seconds.get((name,), 0.0) + secs
                errors[(name,)] = errors.get((name,), 0) + errs
        yield _counter("kvstore_proxy_requests", "Requests answered, by command (INFO commandstats).",
                       ["command"], calls)
        yield _counter("kvstore_proxy_request_errors", "Requests answered with an error, by command.",
                       ["command"], errors)
        merged = ProxyFigures(snaps).histograms()
        help_text = "Time from a request's arrival to its reply being written, by command."
        if merged is not None:  # latency tracking: every reply is in a histogram already
            hist = HistogramMetricFamily("kvstore_proxy_request_duration_seconds", help_text, labels=["command"])
            for name, counts in sorted(merged.commands.items()):
                under = merged.at_or_under(name, (b * 1e6 for b in BUCKETS))
                buckets = [*zip(map(repr, BUCKETS), under, strict=True), ("+Inf", sum(counts.values()))]
                hist.add_metric([name], buckets, seconds.get((name,), 0.0))
            yield hist
            return
        summary = SummaryMetricFamily("kvstore_proxy_request_duration_seconds", help_text, labels=["command"])
        for key in sorted(calls):
            summary.add_metric(list(key), int(calls[key]), seconds[key])
        yield summary

    def _backends(self, m: list[dict[str, Any]]) -> Iterable[Metric]:
        states: dict[tuple[str, str], dict[str, int]] = {}
        pending: dict[tuple[str, ...], float] = {}
        connects: dict[tuple[str, ...], float] = {}
        failures: dict[tuple[str, ...], float] = {}
        for x in m:
            for b in x["backends"]:
                key = (b["group"], b["address"])
                per = states.setdefault(key, dict.fromkeys(BACKEND_STATES, 0))
                state = b["state"] if b["state"] in per else "down"
                per[state] += 1
                pending[key] = pending.get(key, 0) + b["pending"]
                connects[key] = connects.get(key, 0) + b["connects"]
                failures[key] = failures.get(key, 0) + b["failures"]
        fam = GaugeMetricFamily("kvstore_proxy_backend_connections",
                                "Workers' connections to each group's master, by state.",
                                labels=["group", "address", "state"])
        up = GaugeMetricFamily("kvstore_proxy_backend_up",
                               "1 if every worker's connection to the group's master is up.",
                               labels=["group", "address"])
        for key in sorted(states):
            for state, n in states[key].items():
                fam.add_metric([*key, state], n)
            up.add_metric(list(key), 1 if states[key]["up"] == sum(states[key].values()) else 0)
        yield fam
        yield up
        yield _gauge_labelled("kvstore_proxy_backend_pending_requests",
                              "Requests sent to the group's master and not answered yet.",
                              ["group", "address"], pending)
        yield _counter("kvstore_proxy_backend_connects", "Connections made to the group's master.",
                       ["group", "address"], connects)
        yield _counter("kvstore_proxy_backend_failures", "Connections to the group's master that failed or broke.",
                       ["group", "address"], failures)

    def _tables(self, m: list[dict[str, Any]]) -> Iterable[Metric]:
        applied = GaugeMetricFamily("kvstore_proxy_table_version",
                                    "ZooKeeper version of each table every worker has applied (the lowest).",
                                    labels=["table"])
        seen = GaugeMetricFamily("kvstore_proxy_table_version_seen",
                                 "Newest ZooKeeper version of each table a worker was notified of, applied or "
                                 "rejected.", labels=["table"])
        for table in TABLES:
            applied.add_metric([table], min(x["applied"].get(table, -1) for x in m))
            seen.add_metric([table], max(x["seen"].get(table, -1) for x in m))
        yield applied
        yield seen


def _total(snaps: list[dict[str, Any]], key: str) -> float:
    return sum(s[key] for s in snaps)


def _sum_dicts(parts: Iterable[dict[str, Any]]) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for part in parts:
        for k, v in part.items():
            out[(k,)] = out.get((k,), 0) + v
    return out


def _counter(name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], float]) -> Metric:
    fam = CounterMetricFamily(name, doc, labels=labels)
    for key in sorted(values):
        fam.add_metric(list(key), values[key])
    return fam


def _gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(name, doc, value=value)


def _gauge_labelled(name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], float]) -> Metric:
    fam = GaugeMetricFamily(name, doc, labels=labels)
    for key in sorted(values):
        fam.add_metric(list(key), values[key])
    return fam


def render(snaps: list[dict[str, Any]], missing: list[int]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(snaps, missing))  # type: ignore[arg-type]
    return generate_latest(registry)


class MetricsEndpoint:
    """The worker's ``/metrics`` listener (``--metrics-listen``); every worker binds the same port."""

    def __init__(self, w: Worker, host: str, port: int):
        self.worker = w
        self.http = HttpServer(host, port, reuse_port=w.config.workers > 1)
        self.http.route("/metrics", self._metrics)
        self.http.route("/", self._index)

    async def start(self) -> None:
        await self.http.start()

    def close(self) -> None:
        self.http.close()

    async def _metrics(self, request: Request) -> Response:
        snaps, missing = await gather(self.worker)
        return Response(200, render(snaps, missing), PROMETHEUS_TEXT)

    async def _index(self, request: Request) -> Response:
        return Response(200, f"kvstore-proxy {PROXY_VERSION} (pid {os.getpid()}, "
                             f"up {time.time() - self.worker.started_at:.0f}s): metrics at /metrics\n".encode())
