"""Health probes of Redis nodes (PING + INFO replication over raw RESP) and per-node down tracking."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import hiredis

from kvstore_cluster.model import parse_address

# Lines of INFO replication that a probe keeps; everything else is noise for failover decisions.
_INFO_KEYS = ("role", "master_host", "master_port", "master_link_status", "master_repl_offset",
              "slave_repl_offset", "connected_slaves")


class ProbeError(Exception):
    """A probe failed: the node is unreachable, too slow, or answered something that is not Redis."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's outcome: either ``ok`` with replication facts, or an error string."""

    address: str
    ok: bool
    at: float  # time.time() when the probe finished
    error: str | None = None
    role: str | None = None  # "master" / "slave"
    offset: int | None = None  # master_repl_offset of a master, slave_repl_offset of a replica
    master: str | None = None  # "host:port" a replica follows
    link_up: bool | None = None  # master_link_status of a replica

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "at": round(self.at, 3)}
        for name in ("error", "role", "offset", "master", "link_up"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def parse_info(text: str) -> dict[str, str]:
    """``INFO`` text -> ``{field: value}``; section headers and blank lines are skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def result_from_info(address: str, info: dict[str, str], at: float) -> ProbeResult:
    """Build an ``ok`` probe result from parsed INFO replication; ``ProbeError`` if it is not Redis-like."""
    role = info.get("role")
    if role not in ("master", "slave"):
        raise ProbeError(f"INFO replication has no usable role ({role!r})")
    try:
        if role == "master":
            return ProbeResult(address, True, at, role=role, offset=int(info.get("master_repl_offset", "0")))
        master = None
        if info.get("master_host") and info.get("master_port"):
            master = f"{info['master_host']}:{int(info['master_port'])}"
        return ProbeResult(
            address, True, at, role=role, offset=int(info.get("slave_repl_offset", "0")), master=master,
            link_up=info.get("master_link_status") == "up",
        )
    except ValueError as exc:
        raise ProbeError(f"INFO replication has a malformed number ({exc})") from None


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


class NodeProbe:
    """A persistent probe connection to one node; any failure closes it so the next probe reconnects."""

    def __init__(self, address: str, timeout: float, password: str | None = None):
        self.address = address
        self.host, self.port = parse_address(address)
        self.timeout = timeout
        self.password = password
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser: hiredis.Reader | None = None

    async def probe(self) -> ProbeResult:
        """PING and INFO replication within ``timeout``; never raises."""
        try:
            info = await asyncio.wait_for(self._exchange(), self.timeout)
            return result_from_info(self.address, info, time.time())
        except TimeoutError:
            error = f"no answer within {self.timeout:g}s"
        except (OSError, EOFError) as exc:
            error = f"connection failed: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc!r}"
        except hiredis.ProtocolError as exc:
            error = f"not a Redis reply: {exc}"
        except ProbeError as exc:
            error = str(exc)
        self.close()
        return ProbeResult(self.address, False, time.time(), error=error)

    async def _exchange(self) -> dict[str, str]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            self._parser = hiredis.Reader(encoding="utf-8", errors="replace")
        assert self._reader is not None and self._writer is not None
        request = _command(b"PING") + _command(b"INFO", b"replication")
        if self.password is not None:
            request = _command(b"AUTH", self.password.encode()) + request
        self._writer.write(request)
        replies = [await self._reply() for _ in range(3 if self.password is not None else 2)]
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise ProbeError(f"error reply: {reply}")
        if replies[-2] != "PONG":
            raise ProbeError(f"PING answered {str(replies[-2])[:60]!r}")
        if not isinstance(replies[-1], str):
            raise ProbeError("INFO answered something that is not text")
        return parse_info(replies[-1])

    async def _reply(self) -> Any:
        assert self._reader is not None and self._parser is not None
        while True:
            reply = self._parser.gets()
            if reply is not False:
                return reply
            data = await self._reader.read(65536)
            if not data:
                raise EOFError("connection closed by the node")
            self._parser.feed(data)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self._parser = None


@dataclass
class NodeHealth:
    """What this sentinel knows of one node over time: last success, current failure streak."""

    address: str
    first_seen: float  # monotonic
    last_ok: float | None = None  # monotonic time of the last successful probe
    failing_since: float | None = None  # wall time of the first failure of the current streak
    ok_since: float | None = None  # monotonic time of the first success of the current streak
    last: ProbeResult | None = None

    def up_for(self, now: float) -> float:
        """Seconds this node has answered every probe (0 if the last probe failed)."""
        if self.last is None or not self.last.ok or self.ok_since is None:
            return 0.0
        return now - self.ok_since

    def down(self, now: float, down_after: float) -> bool:
        """Down when no probe succeeded for ``down_after`` seconds (since first seen if never)."""
        if self.last is not None and self.last.ok:
            return False
        reference = self.last_ok if self.last_ok is not None else self.first_seen
        return now - reference >= down_after


@dataclass
class Prober:
    """Probes a set of nodes concurrently and keeps their ``NodeHealth``."""

    timeout: float
    down_after: float
    password: str | None = None
    nodes: dict[str, NodeHealth] = field(default_factory=dict)
    _probes: dict[str, NodeProbe] = field(default_factory=dict)

    def set_nodes(self, addresses: set[str]) -> None:
        """Track exactly ``addresses`` (new ones start now; removed ones are forgotten)."""
        now = time.monotonic()
        for addr in addresses - self.nodes.keys():
            self.nodes[addr] = NodeHealth(addr, first_seen=now)
            self._probes[addr] = NodeProbe(addr, self.timeout, self.password)
        for addr in self.nodes.keys() - addresses:
            del self.nodes[addr]
            self._probes.pop(addr).close()

    async def probe_all(self) -> list[tuple[ProbeResult, ProbeResult | None]]:
        """Probe every node once; return ``(result, previous result)`` pairs for logging transitions."""
        addrs = list(self.nodes)
        results = await asyncio.gather(*(self._probes[a].probe() for a in addrs))
        now = time.monotonic()
        out = []
        for addr, result in zip(addrs, results, strict=True):
            health = self.nodes.get(addr)
            if health is None:  # removed while probing
                continue
            previous = health.last
            health.last = result
            if result.ok:
                if previous is None or not previous.ok:
                    health.ok_since = now
                health.last_ok = now
                health.failing_since = None
            else:
                health.ok_since = None
                if health.failing_since is None:
                    health.failing_since = result.at
            out.append((result, previous))
        return out

    def down_nodes(self) -> dict[str, float]:
        """Nodes down now -> wall time their failure streak started."""
        now = time.monotonic()
        return {
            a: (h.failing_since or time.time())
            for a, h in self.nodes.items()
            if h.down(now, self.down_after)
        }

    def result(self, address: str) -> ProbeResult | None:
        health = self.nodes.get(address)
        return health.last if health else None

    def close(self) -> None:
        for p in self._probes.values():
            p.close()
