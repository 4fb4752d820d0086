"""The ``failover/<group>`` znode: a master change in progress, recorded before each of its steps is taken.

Written and read by the operations in kvstore_cluster/ops (failover.py: the sentinel's
failover of a dead master; switchover.py: the admin's planned switchover, finished or undone
by the sentinel if the admin dies); listed by ``kvstore-admin status``. docs/design.md
("Failover", "Switchover") has both state machines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from kvstore_cluster import codec
from kvstore_cluster.codec import ModelError

# Each kind's steps, in order.
STEPS = {
    "failover": ("promote", "repoint", "commit"),
    "switchover": ("pause", "promote"),
}


@dataclass(frozen=True, slots=True)
class FailoverRecord:
    kind: str  # "failover" (sentinel, master dead) or "switchover" (admin, master healthy)
    group: str
    old_master: str
    candidate: str  # the replica being promoted
    step: str  # the step about to be taken (see STEPS)
    by: str  # who runs it: a sentinel id, or "admin"
    started_at: float = field(default_factory=lambda: round(time.time(), 3))

    def __post_init__(self) -> None:
        what = f"failover/{self.group}"
        codec.group_id(self.group, "failover")
        if self.kind not in STEPS:
            raise ModelError(f"{what}: kind must be one of {', '.join(STEPS)}, got {self.kind!r}")
        if self.step not in STEPS[self.kind]:
            raise ModelError(f"{what}: a {self.kind}'s step is one of {', '.join(STEPS[self.kind])}, "
                             f"got {self.step!r}")
        codec.address(self.old_master, what)
        codec.address(self.candidate, what)
        if self.old_master == self.candidate:
            raise ModelError(f"{what}: the candidate is the old master")
        codec.check_type(self.by, str, f"{what}: field 'by'")

    def at_step(self, step: str) -> FailoverRecord:
        return replace(self, step=step)

    @property
    def age(self) -> float:
        return time.time() - self.started_at

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "group": self.group, "old_master": self.old_master, "candidate": self.candidate,
                "step": self.step, "by": self.by, "started_at": self.started_at}

    def encode(self) -> bytes:
        return codec.dump_object(self.to_json())

    @classmethod
    def decode(cls, raw: bytes | str) -> FailoverRecord:
        what = "failover record"
        obj = codec.load_object(raw, what)
        return cls(
            kind=codec.field(obj, "kind", str, what),
            group=codec.field(obj, "group", str, what),
            old_master=codec.field(obj, "old_master", str, what),
            candidate=codec.field(obj, "candidate", str, what),
            step=codec.field(obj, "step", str, what),
            by=codec.field(obj, "by", str, what),
            started_at=codec.number(obj, "started_at", what),
        )
