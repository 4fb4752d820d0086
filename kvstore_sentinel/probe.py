"""Health probes of Redis nodes (PING + INFO replication on a kept connection) and per-node down tracking."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from kvstore_cluster.node import Node, NodeError
from kvstore_cluster.sentinel_view import ProbeResult


async def probe(node: Node) -> ProbeResult:
    """PING and INFO replication within the node's timeout; never raises."""
    try:
        await node.ping()
        info = await node.replication()
    except NodeError as exc:
        return ProbeResult(node.address, False, time.time(), error=str(exc))
    return ProbeResult(node.address, True, time.time(), role=info.role, offset=info.offset, master=info.master,
                       link_up=info.link_up)


async def _timed(node: Node) -> tuple[ProbeResult, float]:
    started = time.monotonic()
    result = await probe(node)
    return result, time.monotonic() - started


@dataclass
class NodeHealth:
    """What this sentinel knows of one node over time: last success, current failure streak."""

    address: str
    first_seen: float  # monotonic
    last_ok: float | None = None  # monotonic time of the last successful probe
    failing_since: float | None = None  # wall time of the first failure of the current streak
    ok_since: float | None = None  # monotonic time of the first success of the current streak
    last: ProbeResult | None = None
    seconds: float | None = None  # how long the last probe took (an unanswered one: until its timeout)

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
    _probes: dict[str, Node] = field(default_factory=dict)

    async def set_nodes(self, addresses: set[str]) -> None:
        """Track exactly ``addresses`` (new ones start now; removed ones are forgotten)."""
        now = time.monotonic()
        for addr in addresses - self.nodes.keys():
            self.nodes[addr] = NodeHealth(addr, first_seen=now)
            self._probes[addr] = Node(addr, self.timeout, self.password)
        for addr in self.nodes.keys() - addresses:
            del self.nodes[addr]
            await self._probes.pop(addr).close()

    async def probe_all(self) -> list[tuple[ProbeResult, ProbeResult | None]]:
        """Probe every node once; return ``(result, previous result)`` pairs for logging transitions."""
        addrs = list(self.nodes)
        results = await asyncio.gather(*(_timed(self._probes[a]) for a in addrs))
        now = time.monotonic()
        out = []
        for addr, (result, seconds) in zip(addrs, results, strict=True):
            health = self.nodes.get(addr)
            if health is None:  # removed while probing
                continue
            previous = health.last
            health.last = result
            health.seconds = seconds
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

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self._probes.values()))
