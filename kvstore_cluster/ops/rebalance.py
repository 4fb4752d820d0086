"""``reshard`` and ``rebalance`` requests: planned against the live tables, then run by the reshard executor.

The admin runs them for a user; the sentinel leader runs a rebalance after it rejoined a cache
group, so the group gets a fair share of slots with their keys (docs/design.md, "Cache mode").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from kvstore_cluster import paths
from kvstore_cluster.model import Migration, assign_unowned
from kvstore_cluster.ops import reshard
from kvstore_cluster.ops.errors import OpError, PlanError
from kvstore_cluster.ops.fence import NO_FENCE, Fence
from kvstore_cluster.ops.slot_moves import apply_moves, rebalance_moves, reshard_moves, summarize
from kvstore_cluster.slots import format_slot_ranges
from kvstore_cluster.store import Check, ClusterStore, Set

log = structlog.get_logger("kvstore.ops.rebalance")


@dataclass(frozen=True, slots=True)
class Plan:
    request: dict[str, Any]
    moves: list[Migration]
    unowned: dict[str, int]  # rebalance: unowned slots each group would be given first
    counts_before: dict[str, int]
    counts_after: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"request": self.request, "unowned_assigned": self.unowned, "counts_before": self.counts_before,
                "counts_after": self.counts_after, **summarize(self.moves)}


def _counts(owners: list[str | None] | tuple[str | None, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in owners:
        if o is not None:
            out[o] = out.get(o, 0) + 1
    return dict(sorted(out.items()))


def reshard_request(ranges: list[tuple[int, int]], target: str) -> dict[str, Any]:
    return {"command": "reshard", "slots": format_slot_ranges(ranges), "to": target}


def rebalance_request(drain: str | None) -> dict[str, Any]:
    return {"command": "rebalance", "drain": drain}


def plan_reshard(store: ClusterStore, ranges: list[tuple[int, int]], target: str) -> Plan:
    groups = store.read_groups().value
    g = groups.get(target)
    if g is None:
        raise PlanError(f"unknown group {target!r} (groups: {', '.join(groups.ids()) or 'none'})")
    if g.state != "ok":
        raise PlanError(f"group {target} is {g.state}; slots can only move to a group in state ok")
    owners = store.read_slots().value.owners()
    moves = reshard_moves(owners, ranges, target)
    request = reshard_request(ranges, target)
    return Plan(request, moves, {}, _counts(owners), _counts(apply_moves(owners, moves)))


def plan_rebalance(store: ClusterStore, drain: str | None = None) -> Plan:
    """Unowned slots go to the groups in state ok first, then the fewest moves to even them out."""
    groups = store.read_groups().value
    ok = [g.id for g in groups if g.state == "ok"]
    if not ok:
        raise PlanError("no group in state ok; add one with 'kvstore-admin group add'")
    if drain is not None and groups.get(drain) is None:
        raise PlanError(f"unknown group {drain!r} (groups: {', '.join(groups.ids())})")
    table = store.read_slots().value
    before = table.owners()
    # Unowned slots never go to a group being drained.
    receivers = [g for g in ok if g != drain] or ok
    owners = assign_unowned(table, receivers).owners() if None in before else before
    unowned = _counts([new for old, new in zip(before, owners, strict=True) if old is None])
    moves = rebalance_moves(owners, ok, drain)
    request = rebalance_request(drain)
    return Plan(request, moves, unowned, _counts(before), _counts(apply_moves(owners, moves)))


def assign_unowned_slots(store: ClusterStore, drain: str | None = None, fence: Fence = NO_FENCE) -> dict[str, int]:
    """Give every unowned slot to the groups in state ok (but ``drain``), evenly; return the slots each gained.

    No key moves: an unowned slot holds no key anywhere. Owned slots never move here.
    """
    groups = store.read_groups()
    slots = store.read_slots()
    ok = [g.id for g in groups.value if g.state == "ok"]
    if not ok:
        raise PlanError("no group in state ok to assign slots to; add one with 'kvstore-admin group add'")
    receivers = [g for g in ok if g != drain]
    before = slots.value.owners()
    if None not in before or not receivers:
        return {}
    table = assign_unowned(slots.value, receivers)
    gained = _counts([new for old, new in zip(before, table.owners(), strict=True) if old is None])
    fence.check()
    store.commit([Set(paths.slots(store.cluster), table.encode(), slots.version),
                  Check(paths.groups(store.cluster), groups.version), *fence.zk_checks()])
    log.info("slots_assigned", gained=gained)
    return gained


# --- running requests ---------------------------------------------------------------------------


def _check_no_data(store: ClusterStore, no_data: bool, yes_lose_data: bool) -> None:
    if no_data and store.read_meta().value.mode == "datastore" and not yes_lose_data:
        raise OpError("--no-data drops the keys of the moved slots; in datastore mode add --yes-lose-data "
                      "to confirm that loss")


def resume_or_abort(store: ClusterStore, options: reshard.Options, *, abort: bool, fence: Fence = NO_FENCE,
                    reporter: reshard.Reporter | None = None) -> dict[str, Any]:
    current = store.read_reshard()
    if current is None:
        return {"status": "idle", "message": "no reshard in progress; nothing to " + ("abort" if abort else "resume")}
    request = dict(current.value.request)
    if abort:
        result = reshard.abort(store, options, fence, reporter)
        assert result is not None
        return {"status": "aborted", "request": request, **result.to_json()}
    result = reshard.run(store, options, fence, reporter)
    return {"status": "done", "request": request, **result.to_json()}


def start_or_resume(store: ClusterStore, plan: Plan, options: reshard.Options, *, no_data: bool,
                    fence: Fence = NO_FENCE, reporter: reshard.Reporter | None = None) -> dict[str, Any]:
    """Run ``plan``; the same request while its reshard is recorded resumes that one instead."""
    current = store.read_reshard()
    if current is not None:
        if current.value.request != plan.request:
            raise reshard.in_progress_error(current.value)
        return {"plan": None, **resume_or_abort(store, options, abort=False, fence=fence, reporter=reporter)}
    if not plan.moves:
        return {"status": "nothing to do", "request": plan.request, "plan": plan.to_json(), "slots_moved": 0,
                "keys_moved": 0}
    reshard.start(store, plan.moves, plan.request, no_data=no_data, slots_per_step=options.slots_per_step,
                  fence=fence)
    result = reshard.run(store, options, fence, reporter)
    return {"status": "done", "request": plan.request, "plan": plan.to_json(), **result.to_json()}


def run_reshard(store: ClusterStore, ranges: list[tuple[int, int]], target: str, options: reshard.Options, *,
                no_data: bool = False, yes_lose_data: bool = False, fence: Fence = NO_FENCE,
                reporter: reshard.Reporter | None = None) -> dict[str, Any]:
    """Move ``ranges`` (with their keys) to ``target``; the same request again resumes it."""
    _check_no_data(store, no_data, yes_lose_data)
    current = store.read_reshard()
    if current is not None:
        # The same command again resumes, even when its plan (computed from today's table) differs.
        if current.value.request == reshard_request(ranges, target):
            return {"plan": None, **resume_or_abort(store, options, abort=False, fence=fence, reporter=reporter)}
        raise reshard.in_progress_error(current.value)
    return start_or_resume(store, plan_reshard(store, ranges, target), options, no_data=no_data, fence=fence,
                           reporter=reporter)


def run_rebalance(store: ClusterStore, options: reshard.Options, *, drain: str | None = None,
                  no_data: bool = False, yes_lose_data: bool = False, fence: Fence = NO_FENCE,
                  reporter: reshard.Reporter | None = None) -> dict[str, Any]:
    """Unowned slots to the groups in state ok first, then the fewest slot moves (with keys) to even them out."""
    _check_no_data(store, no_data, yes_lose_data)
    current = store.read_reshard()
    if current is not None:
        if current.value.request == rebalance_request(drain):
            return {"plan": None, **resume_or_abort(store, options, abort=False, fence=fence, reporter=reporter)}
        raise reshard.in_progress_error(current.value)
    assigned = assign_unowned_slots(store, drain, fence)
    plan = plan_rebalance(store, drain)
    out = start_or_resume(store, plan, options, no_data=no_data, fence=fence, reporter=reporter)
    out["unowned_assigned"] = assigned
    return out
