"""The proxy's own observability: counters, the slow log, and the text of INFO."""

from __future__ import annotations

import os
import platform
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from kvstore_proxy.commands import REDIS_VERSION

if TYPE_CHECKING:
    from kvstore_proxy.request import Reply
    from kvstore_proxy.server import Worker

SECTIONS = ("server", "clients", "stats", "commandstats", "backends", "cluster")
_DEFAULT = ("server", "clients", "stats", "backends", "cluster")


class Stats:
    """Counters of one worker process."""

    def __init__(self) -> None:
        self.connections_received = 0
        self.rejected_connections = 0
        self.protocol_errors = 0
        self.idle_closed = 0


class SlowLog:
    """Requests slower than the threshold, newest first (SLOWLOG GET/LEN/RESET).

    ``add`` only keeps references (it can run for many replies in a loaded pipeline); the
    arguments are trimmed as Redis does when SLOWLOG GET asks for them.
    """

    def __init__(self, max_len: int):
        self.entries: deque[tuple[int, float, float, list[bytes], str, bytes]] = deque(maxlen=max(0, max_len))
        self.next_id = 0

    def add(self, r: Reply, seconds: float, session: Any) -> None:
        self.entries.appendleft((self.next_id, time.time(), seconds, r.args, session.addr, session.name))
        self.next_id += 1

    def get(self, count: int) -> list[tuple[int, int, int, list[bytes], bytes, bytes]]:
        out = []
        for i, ts, seconds, args, addr, name in list(self.entries)[: None if count < 0 else count]:
            shown = [a if len(a) <= 128 else a[:128] + b"... (%d more bytes)" % (len(a) - 128) for a in args[:32]]
            if len(args) > 32:
                shown[-1] = b"... (%d more arguments)" % (len(args) - 31)
            out.append((i, int(ts), int(seconds * 1e6), shown, addr.encode(), name))
        return out

    def reset(self) -> None:
        self.entries.clear()


def render_info(worker: Worker, wanted: list[str]) -> bytes:
    """INFO's text for the requested sections (default, ``all``/``everything``, or names)."""
    names = [w.lower() for w in wanted]
    if not names or names == ["default"]:
        sections = list(_DEFAULT)
    elif any(n in ("all", "everything") for n in names):
        sections = list(SECTIONS)
    else:
        sections = [s for s in SECTIONS if s in names]
    out: list[str] = []
    for name in sections:
        out.append(f"# {name.capitalize() if name != 'commandstats' else 'Commandstats'}")
        out.extend(f"{k}:{v}" for k, v in _SECTION[name](worker))
        out.append("")
    return "\r\n".join(out).encode()


def _server(w: Worker) -> list[tuple[str, Any]]:
    now = time.time()
    return [
        ("redis_version", REDIS_VERSION),
        ("kvstore_proxy_version", "0.1.0"),
        ("redis_mode", "standalone"),
        ("os", f"{platform.system()} {platform.release()} {platform.machine()}"),
        ("process_id", os.getpid()),
        ("proxy_id", w.proxy_id),
        ("tcp_port", w.port),
        ("uptime_in_seconds", int(now - w.started_at)),
        ("cluster", w.config.cluster),
        ("workers", w.config.workers),
    ]


def _clients(w: Worker) -> list[tuple[str, Any]]:
    return [("connected_clients", len(w.clients)), ("maxclients", w.config.max_clients)]


def _stats(w: Worker) -> list[tuple[str, Any]]:
    s = w.stats
    calls = sum(st.calls for st in w.commandstats.values())
    return [
        ("total_connections_received", s.connections_received),
        ("total_commands_processed", calls),
        ("rejected_connections", s.rejected_connections),
        ("protocol_errors", s.protocol_errors),
        ("idle_clients_closed", s.idle_closed),
        ("slowlog_len", len(w.slowlog.entries)),
    ]


def _commandstats(w: Worker) -> list[tuple[str, Any]]:
    rows = []
    for name, st in sorted(w.commandstats.items()):
        if not st.calls:
            continue
        usec = int(st.usec * 1e6)
        rows.append((f"cmdstat_{name}",
                     f"calls={st.calls},usec={usec},usec_per_call={usec / st.calls:.2f},"
                     f"rejected_calls=0,failed_calls={st.errors}"))
    return rows


def _backends(w: Worker) -> list[tuple[str, Any]]:
    rows = []
    for i, b in enumerate(w.router.describe()):
        rows.append((f"backend{i}", ",".join(f"{k}={v}" for k, v in b.items())))
    return rows


def _cluster(w: Worker) -> list[tuple[str, Any]]:
    r = w.router
    return [
        ("slots_version", r.slots_version),
        ("groups_version", r.groups_version),
        ("groups", len(r.groups or ())),
        ("fenced", int(r.fenced)),
        ("fence_reason", r.fence_reason or "-"),
        ("zk_state", w.topology.state if w.topology else "-"),
    ]


_SECTION = {
    "server": _server, "clients": _clients, "stats": _stats, "commandstats": _commandstats,
    "backends": _backends, "cluster": _cluster,
}
