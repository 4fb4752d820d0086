"""What each mode promises under a fault, as a verdict on a checker report (docs/contracts.md says it in words).

- Nothing unexpected, nothing misplaced, no diverged replica: under every fault, in both modes.
- Lost acknowledged writes only where a **lossy** fault excuses them: the key's slot belonged to
  the faulty group when the fault began, and the write was in flight inside the fault's loss
  window. Planned operations (switchover, reshard, proxy kill/restart, ZooKeeper pause, slow
  link, a short master pause) excuse nothing.

Loss windows:
- datastore, master crash or long pause: from ``DATASTORE_LOSS_WINDOW`` seconds before the fault
  to the moment the old master is a replica again. The window is what ``min-replicas-max-lag 1``
  bounds: an isolated master stops taking writes once its replicas' last acknowledgement is more
  than 1 s old, seen at its next once-a-second replication cron (so ≤ ~3 s), and a crash loses
  only what it had not yet sent to a replica.
- cache, node failure: everything written before the group was removed, in its slots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from chaos.checker import DIVERGED, LOST, MISPLACED, UNEXPECTED, Anomaly, Report

DATASTORE_LOSS_WINDOW = 3.0


@dataclass(frozen=True)
class FaultRecord:
    """One fault as it happened: which group, when (``time.monotonic``), and whether loss is allowed."""

    name: str
    group: str | None = None
    slots: frozenset[int] = frozenset()  # the group's slots when the fault began
    t0: float = 0.0  # fault injected
    t1: float = 0.0  # fault undone and, for a lossy one, the old node back in line
    lossy: bool = False
    before: float = 0.0  # loss window starts this long before t0 (math.inf: everything older)

    def excuses(self, anomaly: Anomaly) -> bool:
        if not self.lossy or anomaly.slot is None or anomaly.slot not in self.slots:
            return False
        op = anomaly.op
        if op is None:
            return True  # a counter: which increment went is unknowable, its group is what counts
        return op.start <= self.t1 and op.end >= self.t0 - self.before


def lossy_crash(name: str, group: str, slots: frozenset[int], t0: float, t1: float, mode: str) -> FaultRecord:
    before = DATASTORE_LOSS_WINDOW if mode == "datastore" else math.inf
    return FaultRecord(name, group, slots, t0, t1, True, before)


def violations(report: Report, faults: list[FaultRecord]) -> list[str]:
    """Why ``report`` breaks the contract of these faults (empty when it keeps it)."""
    out = []
    for category in (UNEXPECTED, MISPLACED, DIVERGED):
        for a in report.of(category):
            out.append(str(a))
    for a in report.of(LOST):
        if not any(f.excuses(a) for f in faults):
            out.append(f"{a} -- not excused by any lossy fault")
    return out


def excused_lost(report: Report, faults: list[FaultRecord]) -> int:
    return sum(a.count for a in report.of(LOST) if any(f.excuses(a) for f in faults))
