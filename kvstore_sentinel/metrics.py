"""``--metrics-listen``: the sentinel's view of the cluster in Prometheus text format.

Read at scrape time from what the sentinel keeps anyway (its probes, the groups it last read,
its leadership, the failover and reshard records it reads each round), plus two event metrics
the leader feeds when a repair ends (``Context.report``): failovers by group, mode and result,
and their durations. A scrape never waits for ZooKeeper: while it is unreachable the figures are
the last known ones and ``kvstore_sentinel_cluster_read_age_seconds`` grows, which says so.

Failover durations: datastore mode, from the failover record's start to its commit (or its
abandon); cache mode, from this sentinel's first failed probe of the master to the removal of
its group.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from kvstore_cluster.httpserve import PROMETHEUS_TEXT, HttpServer, Request, Response
from kvstore_cluster.model import GROUP_STATES

if TYPE_CHECKING:
    from kvstore_sentinel.service import Sentinel

DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class SentinelMetrics:
    """The sentinel's registry: the state collector and the failover event metrics."""

    def __init__(self, sentinel: Sentinel):
        self.sentinel = sentinel
        self.registry = CollectorRegistry(auto_describe=False)
        self.failovers = Counter("kvstore_sentinel_failovers", "Repairs of a group whose master failed, by result "
                                 "(promoted, abandoned, no_replica, group_removed; cache mode: removed).",
                                 ["group", "mode", "result"], registry=self.registry)
        self.durations = Histogram("kvstore_sentinel_failover_duration_seconds",
                                   "How long each repair took, by result.", ["group", "mode", "result"],
                                   buckets=DURATION_BUCKETS, registry=self.registry)
        self.registry.register(_StateCollector(sentinel))  # type: ignore[arg-type]

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        """``Context.report``'s observer: count a repair that ended."""
        if event != "failover":
            return
        s = self.sentinel
        group, result, seconds = str(fields["group"]), str(fields["result"]), fields.get("seconds")
        if seconds is None:  # cache mode: since our first failed probe of its master
            health = s.prober.nodes.get(str(fields.get("master")))
            since = health.failing_since if health is not None else None
            seconds = time.time() - since if since is not None else 0.0
        self.failovers.labels(group, s.mode, result).inc()
        self.durations.labels(group, s.mode, result).observe(max(0.0, float(seconds)))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector:
    def __init__(self, sentinel: Sentinel):
        self.s = sentinel

    def collect(self) -> Iterator[Metric]:
        s = self.s
        now = time.time()
        yield _gauge("kvstore_sentinel_leader", "1 while this sentinel is the connected leader.",
                     1 if s.is_leader() else 0)
        yield CounterMetricFamily("kvstore_sentinel_leadership_acquired", "Times this sentinel became leader.",
                                  value=s.elections())
        yield _gauge("kvstore_sentinel_zookeeper_connected", "1 while the ZooKeeper session is connected.",
                     1 if s.zk_connected() else 0)
        read_at = s.progress.read_at
        yield _gauge("kvstore_sentinel_cluster_read_age_seconds",
                     "Seconds since the groups, failover and reshard records were last read from ZooKeeper "
                     "(the figures below are that old).", now - read_at if read_at else float("nan"))
        yield CounterMetricFamily("kvstore_sentinel_probe_rounds", "Probe rounds run.", value=s.rounds)
        yield from self._nodes()
        yield from self._groups()
        yield from self._progress(now)

    def _nodes(self) -> Iterator[Metric]:
        s = self.s
        groups = s.groups
        where = {a: (g, "master" if a == g.master else "replica") for g in groups or () for a in g.nodes}
        seconds = GaugeMetricFamily("kvstore_sentinel_probe_seconds",
                                    "How long the last probe (PING + INFO replication) of the node took.",
                                    labels=["node", "group"])
        up = GaugeMetricFamily("kvstore_sentinel_node_up", "1 if the node answered its last probe.",
                               labels=["node", "group", "role"])
        down = GaugeMetricFamily("kvstore_sentinel_node_down",
                                 "1 if the node is down for this sentinel (no answer for --down-after).",
                                 labels=["node", "group", "role"])
        diverged = GaugeMetricFamily("kvstore_sentinel_node_diverged",
                                     "1 if the node answers but its replication is not what its group says "
                                     "(wrong role, follows another master, link down).", labels=["node", "group"])
        offset = GaugeMetricFamily("kvstore_sentinel_node_replication_offset",
                                   "The node's replication offset at its last probe.", labels=["node", "group"])
        lag = GaugeMetricFamily("kvstore_sentinel_replica_lag_bytes",
                                "How far the replica's offset is behind its group master's, at the last probes.",
                                labels=["node", "group"])
        down_now = set(s.prober.down_nodes())
        offsets: dict[str, int] = {}
        for addr, health in sorted(s.prober.nodes.items()):
            group, role = where.get(addr, (None, "unknown"))
            gid = group.id if group is not None else ""
            last = health.last
            if health.seconds is not None:
                seconds.add_metric([addr, gid], health.seconds)
            up.add_metric([addr, gid, role], 1 if last is not None and last.ok else 0)
            down.add_metric([addr, gid, role], 1 if addr in down_now else 0)
            if last is not None and last.ok and group is not None:
                problem = group.replication_problem(addr, last.role, last.master, last.link_up)
                diverged.add_metric([addr, gid], 1 if problem else 0)
            if last is not None and last.ok and last.offset is not None:
                offset.add_metric([addr, gid], last.offset)
                offsets[addr] = last.offset
        for g in groups or ():
            if g.master in offsets:
                for r in g.replicas:
                    if r in offsets:
                        lag.add_metric([r, g.id], max(0, offsets[g.master] - offsets[r]))
        yield from (seconds, up, down, diverged, offset, lag)

    def _groups(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("kvstore_sentinel_group_state",
                                  "1 for the group's current state in ZooKeeper (ok, failing_over, down).",
                                  labels=["group", "state"])
        for g in self.s.groups or ():
            for name in GROUP_STATES:
                state.add_metric([g.id, name], 1 if g.state == name else 0)
        yield state

    def _progress(self, now: float) -> Iterator[Metric]:
        p = self.s.progress
        running = GaugeMetricFamily("kvstore_sentinel_failover_running_seconds",
                                    "Age of each failover or switchover in progress (its record in ZooKeeper).",
                                    labels=["group", "kind", "step"])
        for gid, record in sorted(p.failovers.items()):
            running.add_metric([gid, record.kind, record.step], max(0.0, now - record.started_at))
        yield running
        reshard = p.reshard
        yield _gauge("kvstore_sentinel_reshard_running", "1 while a reshard is recorded in ZooKeeper.",
                     1 if reshard is not None else 0)
        secs = GaugeMetricFamily("kvstore_sentinel_reshard_running_seconds", "Age of the reshard in progress.")
        slots = GaugeMetricFamily("kvstore_sentinel_reshard_slots", "Slots of the reshard in progress, by state.",
                                  labels=["state"])
        keys = GaugeMetricFamily("kvstore_sentinel_reshard_keys_moved", "Keys the reshard in progress moved so far.")
        if reshard is not None:
            secs.add_metric([], max(0.0, now - reshard.started_at))
            slots.add_metric(["done"], reshard.slots_done)
            slots.add_metric(["total"], reshard.total_slots)
            keys.add_metric([], reshard.keys_moved)
        yield from (secs, slots, keys)


def _gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(name, doc, value=value)


class MetricsEndpoint:
    """The sentinel's ``/metrics`` listener."""

    def __init__(self, metrics: SentinelMetrics, host: str, port: int):
        self.metrics = metrics
        self.http = HttpServer(host, port)
        self.http.route("/metrics", self._metrics)

    async def start(self) -> None:
        await self.http.start()

    def close(self) -> None:
        self.http.close()

    async def _metrics(self, request: Request) -> Response:
        return Response(200, self.metrics.render(), PROMETHEUS_TEXT)
