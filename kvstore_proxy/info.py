"""INFO as one Redis server would answer it, for the whole proxy and the groups behind it.

Each standard section of Redis 7.0 with its fields, meaning what they mean on one server::

    server, replication     the proxy itself (role:master, no replicas; uptime of the whole proxy)
    clients, cpu,           the proxy's workers, summed (worker_snapshot of each, over siblings.py)
    commandstats, errorstats,
    latencystats
    memory, persistence,    the groups' masters combined (aggregate.py) from their INFO (groupinfo.py,
    keyspace                cached for a second)
    stats                   both: the proxy's connections, commands and errors, the groups' keyspace
                            hits, expiries, evictions and network bytes
    cluster                 cluster_enabled:0, then the proxy's view of the kvstore cluster
    backends                (kvstore) this worker's connections to the masters

A group or a sibling worker that does not answer is named in the sections it would have fed
(``missing_groups:g2``, ``missing_workers:1``) instead of failing the reply.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvstore_proxy import aggregate
from kvstore_proxy.commands import REDIS_VERSION
from kvstore_proxy.groupinfo import GroupAnswer
from kvstore_proxy.latency import PERCENTILES, Histograms, LatencyEvents

if TYPE_CHECKING:
    from kvstore_proxy.server import Worker

PROXY_VERSION = "0.1.0"
# Redis prints a hash of its build; ours names the proxy's version the same way (hex, never a number).
_BUILD_ID = "k" + hashlib.sha1(f"kvstore-proxy {PROXY_VERSION}".encode()).hexdigest()[:15]

# Redis 7.0's order; "backends" is kvstore's own.
SECTIONS = ("server", "clients", "memory", "persistence", "stats", "replication", "cpu", "modules",
            "commandstats", "errorstats", "latencystats", "cluster", "backends", "keyspace")
DEFAULT = tuple(s for s in SECTIONS if s not in ("commandstats", "latencystats"))
_TITLES = {"cpu": "CPU"}
FROM_GROUPS = frozenset({"memory", "persistence", "stats", "keyspace"})
FROM_WORKERS = frozenset({"clients", "stats", "cpu", "commandstats", "errorstats", "latencystats"})


def select(args: list[bytes]) -> list[str]:
    """The sections ``INFO [section ...]`` asks for, in Redis's order (unknown names add nothing)."""
    names = {a.decode(errors="replace").lower() for a in args}
    if not names:
        names = {"default"}
    wanted: set[str] = set()
    for n in names:
        if n == "default":
            wanted.update(DEFAULT)
        elif n in ("all", "everything"):
            wanted.update(SECTIONS)
        elif n in SECTIONS:
            wanted.add(n)
    return [s for s in SECTIONS if s in wanted]


# --- one worker's figures, and the whole proxy's ------------------------------------------------------


def worker_snapshot(w: Worker) -> dict[str, Any]:
    """This worker's counters as JSON-able data: what a sibling's INFO asks for (siblings.py ``stats``)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    main = resource.getrusage(resource.RUSAGE_THREAD)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = w.stats
    sessions = list(w.clients.values())
    return {
        "index": w.family.index,
        "pid": os.getpid(),
        "clients": len(sessions),
        "blocked": len(w.stateful.blocked),  # clients waiting in BLPOP, XREAD BLOCK, ... (blocking.py)
        "monitors": len(w.monitor.clients),
        "max_input": max((c.pending_input for c in sessions), default=0),
        "max_output": max((c.transport.get_write_buffer_size() for c in sessions if c.transport is not None),
                          default=0),
        "connections_received": s.connections_received,
        "rejected_connections": s.rejected_connections,
        "protocol_errors": s.protocol_errors,
        "idle_closed": s.idle_closed,
        "commands": {name: [st.calls, st.usec, st.errors] for name, st in w.commandstats.items() if st.calls},
        "errors": dict(s.errors),
        "ops": w.ops.rate(),
        "cpu": [me.ru_stime, me.ru_utime, children.ru_stime, children.ru_utime, main.ru_stime, main.ru_utime],
        "events": w.slowlog.events.to_json(),
        "histograms": Histograms.of(w.commandstats.values()) if w.outbox.latency_tracking else None,
        "slowlog_len": len(w.slowlog.entries),
    }


@dataclass
class ProxyFigures:
    """Every worker's snapshot added up; ``missing`` lists the workers that did not answer."""

    snaps: list[dict[str, Any]]
    missing: list[int] = field(default_factory=list)

    def total(self, key: str) -> Any:
        return sum(s[key] for s in self.snaps)

    def commands(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for s in self.snaps:
            for name, (calls, usec, errors) in s["commands"].items():
                row = out.setdefault(name, [0, 0.0, 0])
                row[0] += calls
                row[1] += usec
                row[2] += errors
        return out

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.snaps:
            for code, n in s["errors"].items():
                out[code] = out.get(code, 0) + n
        return out

    def events(self) -> LatencyEvents:
        return LatencyEvents.merge([s["events"] for s in self.snaps])

    def histograms(self) -> Histograms | None:
        parts = [s["histograms"] for s in self.snaps if s["histograms"] is not None]
        return Histograms.merge(parts) if parts else None


def parse_snapshot(raw: bytes | None) -> dict[str, Any] | None:
    """A sibling's ``stats`` reply, or None if it is not one (then the sibling counts as missing)."""
    if not raw:
        return None
    try:
        snap = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(snap, dict):
        return None
    numbers_ok = all(isinstance(snap.get(k), int | float) for k in _SNAPSHOT_NUMBERS)
    shapes_ok = (isinstance(snap.get("commands"), dict) and isinstance(snap.get("errors"), dict)
                 and isinstance(snap.get("events"), dict) and isinstance(snap.get("cpu"), list)
                 and len(snap["cpu"]) == 6 and isinstance(snap.get("histograms"), dict | None))
    return snap if numbers_ok and shapes_ok else None


_SNAPSHOT_NUMBERS = ("clients", "blocked", "monitors", "max_input", "max_output", "connections_received",
                     "rejected_connections", "protocol_errors", "idle_closed", "ops", "slowlog_len")


# --- rendering -------------------------------------------------------------------------------------------


@dataclass
class View:
    """What one INFO reply is built from."""

    worker: Worker
    proxy: ProxyFigures
    groups: list[GroupAnswer]

    def answered(self) -> list[GroupAnswer]:
        return [g for g in self.groups if g.error is None]

    def missing_groups(self) -> list[tuple[str, str]]:
        return [("missing_groups", ",".join(g.group for g in self.groups if g.error is not None))] \
            if any(g.error is not None for g in self.groups) else []

    def missing_workers(self) -> list[tuple[str, str]]:
        return [("missing_workers", ",".join(map(str, self.proxy.missing)))] if self.proxy.missing else []

    def group_section(self, name: str) -> dict[str, str]:
        answered = self.answered()
        parts = [aggregate.parse_info(_text(g.value)).get(name, {}) for g in answered]
        return aggregate.merge_section(name, parts, [g.host for g in answered]) if parts else {}


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def render(view: View, sections: list[str]) -> bytes:
    out: list[str] = []
    for name in sections:
        out.append(f"# {_TITLES.get(name, name.capitalize())}")
        out.extend(f"{k}:{v}" for k, v in _SECTION[name](view))
        out.append("")
    return "\r\n".join(out).encode()


Rows = list[tuple[str, Any]]


def _server(v: View) -> Rows:
    w = v.worker
    now = time.time()
    uptime = int(now - w.family.started_at)
    return [
        ("redis_version", REDIS_VERSION),
        ("redis_git_sha1", "00000000"),
        ("redis_git_dirty", 0),
        ("redis_build_id", _BUILD_ID),
        ("redis_mode", "standalone"),
        ("os", f"{platform.system()} {platform.release()} {platform.machine()}"),
        ("arch_bits", 64 if sys.maxsize > 2**32 else 32),
        ("monotonic_clock", "POSIX clock_gettime"),
        ("multiplexing_api", "epoll" if sys.platform == "linux" else "kqueue"),
        ("atomicvar_api", "none"),
        ("gcc_version", "0.0.0"),
        ("process_id", os.getpid()),
        ("process_supervised", "systemd" if os.environ.get("NOTIFY_SOCKET") else "no"),
        ("run_id", w.family.run_id),
        ("tcp_port", w.port),
        ("server_time_usec", int(now * 1e6)),
        ("uptime_in_seconds", uptime),
        ("uptime_in_days", uptime // 86400),
        ("hz", 10),  # the proxy's timer (timeouts, idle clients, ops/s) runs every 100 ms
        ("configured_hz", 10),
        ("lru_clock", int(now) & ((1 << 24) - 1)),
        ("executable", os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else sys.executable),
        ("config_file", ""),
        ("io_threads_active", 0),
        ("kvstore_proxy_version", PROXY_VERSION),
        ("proxy_id", w.proxy_id),
        ("cluster", w.config.cluster),
        ("workers", w.config.workers),
        ("worker_index", w.family.index),
    ]


def _clients(v: View) -> Rows:
    p = v.proxy
    return [
        ("connected_clients", p.total("clients")),
        ("cluster_connections", 0),
        # Each worker accepts up to --max-clients.
        ("maxclients", v.worker.config.max_clients * v.worker.config.workers),
        ("client_recent_max_input_buffer", max(s["max_input"] for s in p.snaps)),
        ("client_recent_max_output_buffer", max(s["max_output"] for s in p.snaps)),
        ("blocked_clients", p.total("blocked")),
        ("tracking_clients", 0),
        ("clients_in_timeout_table", 0),
        ("monitor_clients", p.total("monitors")),
        *v.missing_workers(),
    ]


def _group_rows(v: View, name: str) -> Rows:
    return [*v.group_section(name).items(), *v.missing_groups()]


def _memory(v: View) -> Rows:
    return _group_rows(v, "memory")


def _persistence(v: View) -> Rows:
    return _group_rows(v, "persistence")


# The Stats fields that are the proxy's own: its clients' connections, commands and errors. It has
# no replicas, and its network bytes are those the masters exchanged with it (replication excluded).
_PROXY_STATS = ("total_connections_received", "total_commands_processed", "instantaneous_ops_per_sec",
                "total_net_input_bytes", "total_net_output_bytes", "total_net_repl_input_bytes",
                "total_net_repl_output_bytes", "instantaneous_input_kbps", "instantaneous_output_kbps",
                "instantaneous_input_repl_kbps", "instantaneous_output_repl_kbps", "rejected_connections",
                "sync_full", "sync_partial_ok", "sync_partial_err", "unexpected_error_replies",
                "total_error_replies")


def _stats(v: View) -> Rows:
    p = v.proxy
    commands = p.commands()
    groups = v.group_section("stats")
    mine: dict[str, Any] = {
        "total_connections_received": p.total("connections_received"),
        "total_commands_processed": sum(int(c[0]) for name, c in commands.items() if not name.startswith("(")),
        "instantaneous_ops_per_sec": int(p.total("ops")),
        "total_net_repl_input_bytes": 0, "total_net_repl_output_bytes": 0,
        "instantaneous_input_repl_kbps": "0.00", "instantaneous_output_repl_kbps": "0.00",
        "rejected_connections": p.total("rejected_connections"),
        "sync_full": 0, "sync_partial_ok": 0, "sync_partial_err": 0,
        "unexpected_error_replies": 0,
        "total_error_replies": sum(int(c[2]) for c in commands.values()),
    }
    for total, repl in (("total_net_input_bytes", "total_net_repl_input_bytes"),
                        ("total_net_output_bytes", "total_net_repl_output_bytes")):
        if total in groups:
            mine[total] = int(groups[total]) - int(groups.get(repl, 0))
    for kbps, repl in (("instantaneous_input_kbps", "instantaneous_input_repl_kbps"),
                       ("instantaneous_output_kbps", "instantaneous_output_repl_kbps")):
        if kbps in groups:
            mine[kbps] = f"{float(groups[kbps]) - float(groups.get(repl, 0)):.2f}"
    if groups:
        rows = [(k, mine.get(k, val)) for k, val in groups.items()]
    else:
        rows = [(k, mine[k]) for k in _PROXY_STATS if k in mine]
    return [
        *rows,
        ("protocol_errors", p.total("protocol_errors")),
        ("idle_clients_closed", p.total("idle_closed")),
        ("slowlog_len", p.total("slowlog_len")),
        *v.missing_groups(),
        *v.missing_workers(),
    ]


def _replication(v: View) -> Rows:
    return [
        ("role", "master"),
        ("connected_slaves", 0),
        ("master_failover_state", "no-failover"),
        ("master_replid", v.worker.family.run_id),
        ("master_replid2", "0" * 40),
        ("master_repl_offset", 0),
        ("second_repl_offset", -1),
        ("repl_backlog_active", 0),
        ("repl_backlog_size", 1048576),
        ("repl_backlog_first_byte_offset", 0),
        ("repl_backlog_histlen", 0),
    ]


def _cpu(v: View) -> Rows:
    names = ("used_cpu_sys", "used_cpu_user", "used_cpu_sys_children", "used_cpu_user_children",
             "used_cpu_sys_main_thread", "used_cpu_user_main_thread")
    sums = [sum(s["cpu"][i] for s in v.proxy.snaps) for i in range(len(names))]
    return [*((n, f"{x:.6f}") for n, x in zip(names, sums, strict=True)), *v.missing_workers()]


def _modules(v: View) -> Rows:
    return []


def _commandstats(v: View) -> Rows:
    rows = []
    for name, (calls, seconds, errors) in sorted(v.proxy.commands().items()):
        if name.startswith("("):  # the proxy's pseudo-commands: unknown commands, protocol errors
            continue
        usec = int(seconds * 1e6)
        rows.append((f"cmdstat_{name}", f"calls={int(calls)},usec={usec},usec_per_call={usec / calls:.2f},"
                                        f"rejected_calls=0,failed_calls={int(errors)}"))
    return [*rows, *v.missing_workers()]


def _errorstats(v: View) -> Rows:
    return [*((f"errorstat_{code}", f"count={n}") for code, n in sorted(v.proxy.errors().items())),
            *v.missing_workers()]


def _latencystats(v: View) -> Rows:
    hist = v.proxy.histograms()
    rows = []
    if hist is not None:
        for name in sorted(hist.commands):
            if name.startswith("("):
                continue
            values = hist.percentiles(name)
            rows.append((f"latency_percentiles_usec_{name}",
                         ",".join(f"p{p:g}={x:.3f}" for p, x in zip(PERCENTILES, values, strict=True))))
    return [*rows, *v.missing_workers()]


def _cluster(v: View) -> Rows:
    w = v.worker
    r = w.router
    return [
        ("cluster_enabled", 0),  # not a Redis Cluster: the proxy routes keys itself
        ("slots_version", r.slots_version),
        ("groups_version", r.groups_version),
        ("groups", len(r.groups or ())),
        ("fenced", int(r.fenced)),
        ("fence_reason", r.fence_reason or "-"),
        ("zk_state", w.topology.state if w.topology else "-"),
    ]


def _backends(v: View) -> Rows:
    return [(f"backend{i}", ",".join(f"{k}={val}" for k, val in b.items()))
            for i, b in enumerate(v.worker.router.describe())]


def _keyspace(v: View) -> Rows:
    parts = [aggregate.parse_info(_text(g.value)).get("keyspace", {}) for g in v.answered()]
    return [*aggregate.merge_keyspace(parts).items(), *v.missing_groups()]


_SECTION = {
    "server": _server, "clients": _clients, "memory": _memory, "persistence": _persistence, "stats": _stats,
    "replication": _replication, "cpu": _cpu, "modules": _modules, "commandstats": _commandstats,
    "errorstats": _errorstats, "latencystats": _latencystats, "cluster": _cluster, "backends": _backends,
    "keyspace": _keyspace,
}
