"""The ``sentinels/<id>`` znode: what one sentinel sees (nodes down since when, each node's last probe).

Each sentinel publishes its own (ephemeral) view every probe round; the leader counts the
fresh ones for its quorum, ``kvstore-admin status`` shows them all (docs/design.md,
"Health checks and quorum").
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvstore_cluster import codec
from kvstore_cluster.codec import ModelError

ROLES = ("master", "replica")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe of a node: either ``ok`` with its replication facts, or an error."""

    address: str
    ok: bool
    at: float  # time.time() when the probe finished
    error: str | None = None
    role: str | None = None  # "master" / "replica"
    offset: int | None = None  # master_repl_offset of a master, slave_repl_offset of a replica
    master: str | None = None  # HOST:PORT a replica follows
    link_up: bool | None = None  # a replica's master_link_status

    def __post_init__(self) -> None:
        if self.role is not None and self.role not in ROLES:
            raise ModelError(f"probe of {self.address}: role must be one of {', '.join(ROLES)}, got {self.role!r}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "at": round(self.at, 3)}
        for name in ("error", "role", "offset", "master", "link_up"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, address: str, obj: Any, what: str) -> ProbeResult:
        what = f"{what}: probe of {address}"
        if not isinstance(obj, dict):
            raise ModelError(f"{what}: expected a JSON object")
        master = codec.optional(obj, "master", str, what)
        return cls(
            address=codec.address(address, what),
            ok=codec.field(obj, "ok", bool, what),
            at=codec.number(obj, "at", what),
            error=codec.optional(obj, "error", str, what),
            role=codec.optional(obj, "role", str, what),
            offset=codec.optional(obj, "offset", int, what),
            master=None if master is None else codec.address(master, what),
            link_up=codec.optional(obj, "link_up", bool, what),
        )


@dataclass(frozen=True, slots=True)
class SentinelView:
    id: str
    time: float  # when it was published (time.time()); an old view no longer votes
    leader: bool  # whether its sentinel was the acting leader then
    down: Mapping[str, float] = field(default_factory=dict)  # node -> wall time its failure streak began
    nodes: Mapping[str, ProbeResult] = field(default_factory=dict)  # node -> its last probe

    def __post_init__(self) -> None:
        for address in self.down:
            codec.address(address, f"sentinel view {self.id!r}: down")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "time": round(self.time, 3), "leader": self.leader,
            "down": {a: round(since, 3) for a, since in sorted(self.down.items())},
            "nodes": {a: p.to_json() for a, p in sorted(self.nodes.items())},
        }

    def encode(self) -> bytes:
        return codec.dump_object(self.to_json())

    @classmethod
    def decode(cls, raw: bytes | str) -> SentinelView:
        what = "sentinel view"
        obj = codec.load_object(raw, what)
        down = codec.field(obj, "down", dict, what)
        nodes = codec.field(obj, "nodes", dict, what)
        for address, since in down.items():
            codec.check_type(since, (int, float), f"{what}: down[{address!r}]")
        return cls(
            id=codec.field(obj, "id", str, what),
            time=codec.number(obj, "time", what),
            leader=codec.field(obj, "leader", bool, what),
            down={a: float(since) for a, since in down.items()},
            nodes={a: ProbeResult.from_json(a, p, what) for a, p in nodes.items()},
        )


def fresh_views(views: Mapping[str, SentinelView], stale_after: float,
                now: float | None = None) -> dict[str, SentinelView]:
    """The views published less than ``stale_after`` seconds ago.

    A paused sentinel keeps its ephemeral node until its session expires; its frozen view must not
    keep voting, so views carry their publication time and old ones are ignored.
    """
    now = time.time() if now is None else now
    return {name: view for name, view in views.items() if now - view.time <= stale_after}
