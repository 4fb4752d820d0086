"""Planning ``reshard`` and ``rebalance`` requests against the live tables (the moving is ``reshard``'s)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import click

from kvstore_admin import groups as ops
from kvstore_admin import reshard
from kvstore_admin.errors import AdminError
from kvstore_admin.plan import Move, PlanError, apply_moves, rebalance_moves, reshard_moves, summarize
from kvstore_cluster import paths
from kvstore_cluster.model import assign_unowned
from kvstore_cluster.slots import format_slot_ranges, parse_slot_ranges
from kvstore_cluster.store import Check, ClusterStore, Set


@dataclass(frozen=True, slots=True)
class Plan:
    request: dict[str, Any]
    moves: list[Move]
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


def plan_reshard(store: ClusterStore, slots_text: str, target: str) -> Plan:
    try:
        ranges = parse_slot_ranges(slots_text)
    except ValueError as exc:
        raise AdminError(f"--slots: {exc}") from None
    groups = store.read_groups().value
    g = groups.get(target)
    if g is None:
        raise AdminError(f"unknown group {target!r} (groups: {', '.join(groups.ids()) or 'none'})")
    if g.state != "ok":
        raise AdminError(f"group {target} is {g.state}; slots can only move to a group in state ok")
    owners = store.read_slots().value.owners()
    try:
        moves = reshard_moves(owners, ranges, target)
    except PlanError as exc:
        raise AdminError(str(exc)) from None
    request = {"command": "reshard", "slots": format_slot_ranges(ranges), "to": target}
    return Plan(request, moves, {}, _counts(owners), _counts(apply_moves(owners, moves)))


def plan_rebalance(store: ClusterStore, drain: str | None = None) -> Plan:
    """Unowned slots go to the groups in state ok first, then the fewest moves to even them out."""
    groups = store.read_groups().value
    ok = [g.id for g in groups if g.state == "ok"]
    if not ok:
        raise AdminError("no group in state ok; add one with 'group add'")
    if drain is not None and groups.get(drain) is None:
        raise AdminError(f"unknown group {drain!r} (groups: {', '.join(groups.ids())})")
    table = store.read_slots().value
    before = table.owners()
    # Unowned slots never go to a group being drained.
    receivers = [g for g in ok if g != drain] or ok
    owners = assign_unowned(table, receivers).owners() if None in before else before
    unowned = _counts([new for old, new in zip(before, owners, strict=True) if old is None])
    try:
        moves = rebalance_moves(owners, ok, drain)
    except PlanError as exc:
        raise AdminError(str(exc)) from None
    request = {"command": "rebalance", "drain": drain}
    return Plan(request, moves, unowned, _counts(before), _counts(apply_moves(owners, moves)))


def assign_unowned_first(store: ClusterStore, drain: str | None) -> dict[str, int]:
    """The existing rebalance step (unowned slots to the ok groups), refused while a reshard runs."""
    current = reshard.read_state(store)
    if current is not None:
        raise reshard.in_progress_error(current.value)
    if drain is None:
        return ops.rebalance(store)
    # Draining: hand unowned slots to the other groups only (there is no data to move for them).
    groups = store.read_groups()
    slots = store.read_slots()
    receivers = [g.id for g in groups.value if g.state == "ok" and g.id != drain]
    if None not in slots.value.owners() or not receivers:
        return {}
    table = assign_unowned(slots.value, receivers)
    gained = _counts([n for o, n in zip(slots.value.owners(), table.owners(), strict=True) if o is None])
    store.commit([Set(paths.slots(store.cluster), table.encode(), slots.version),
                  Check(paths.groups(store.cluster), groups.version)])
    return gained


def render_plan(plan: Plan) -> str:
    lines = []
    if plan.unowned:
        lines.append("assign unowned slots: " + ", ".join(f"{g} +{n}" for g, n in plan.unowned.items()))
    if not plan.moves:
        lines.append("no slot needs to move")
    else:
        s = summarize(plan.moves)
        lines.append(f"move {s['slots']} slots:")
        for p in s["pairs"]:
            ranges = format_slot_ranges([(m.lo, m.hi) for m in plan.moves
                                         if (m.source, m.target) == (p["source"], p["target"])])
            shown = ranges if len(ranges) <= 60 else ranges[:57] + "..."
            lines.append(f"  {p['source']} -> {p['target']}: {p['slots']} slots ({shown})")
    lines.append("slots per group after: " + (", ".join(f"{g} {n}" for g, n in plan.counts_after.items()) or "-"))
    return "\n".join(lines)


# --- the commands' work (cli.py only wires options to these) ------------------------------------


def _check_no_data(store: ClusterStore, no_data: bool, yes_lose_data: bool) -> None:
    if no_data and store.read_meta().value.mode == "datastore" and not yes_lose_data:
        raise AdminError("--no-data drops the keys of the moved slots; in datastore mode add --yes-lose-data "
                         "to confirm that loss")


def resume_or_abort(store: ClusterStore, options: reshard.Options, *, abort: bool,
                    reporter: reshard.Reporter | None = None) -> dict[str, Any]:
    current = reshard.read_state(store)
    if current is None:
        return {"status": "idle", "message": "no reshard in progress; nothing to " + ("abort" if abort else "resume")}
    request = current.value.request
    if abort:
        result = reshard.abort(store, options, reporter)
        assert result is not None
        return {"status": "aborted", "request": request, **result.to_json()}
    result = reshard.run(store, options, reporter)
    return {"status": "done", "request": request, **result.to_json()}


def start_or_resume(store: ClusterStore, plan: Plan, options: reshard.Options, *, no_data: bool,
                    reporter: reshard.Reporter | None = None) -> dict[str, Any]:
    """Run ``plan``; the same request while its reshard is recorded resumes that one instead."""
    current = reshard.read_state(store)
    if current is not None:
        if current.value.request != plan.request:
            raise reshard.in_progress_error(current.value)
        return {"plan": None, **resume_or_abort(store, options, abort=False, reporter=reporter)}
    if not plan.moves:
        return {"status": "nothing to do", "request": plan.request, "plan": plan.to_json(), "slots_moved": 0,
                "keys_moved": 0}
    reshard.start(store, plan.moves, plan.request, no_data=no_data, slots_per_step=options.slots_per_step)
    result = reshard.run(store, options, reporter)
    return {"status": "done", "request": plan.request, "plan": plan.to_json(), **result.to_json()}


def run_reshard(store: ClusterStore, slots_text: str, target: str, options: reshard.Options, *,
                no_data: bool = False, yes_lose_data: bool = False,
                reporter: reshard.Reporter | None = None) -> dict[str, Any]:
    _check_no_data(store, no_data, yes_lose_data)
    current = reshard.read_state(store)
    if current is not None and current.value.request.get("command") == "reshard":
        # The same command again resumes, even when its plan (computed from today's table) differs.
        try:
            same = current.value.request == {"command": "reshard", "slots": format_slot_ranges(
                parse_slot_ranges(slots_text)), "to": target}
        except ValueError:
            same = False
        if same:
            return {"plan": None, **resume_or_abort(store, options, abort=False, reporter=reporter)}
    if current is not None:
        raise reshard.in_progress_error(current.value)
    return start_or_resume(store, plan_reshard(store, slots_text, target), options, no_data=no_data,
                           reporter=reporter)


def run_rebalance(store: ClusterStore, options: reshard.Options, *, drain: str | None = None,
                  dry_run: bool = False, no_data: bool = False, yes_lose_data: bool = False,
                  reporter: reshard.Reporter | None = None) -> dict[str, Any]:
    if dry_run:
        plan = plan_rebalance(store, drain)
        return {"status": "dry run", "request": plan.request, "plan": plan.to_json(), "text": render_plan(plan)}
    _check_no_data(store, no_data, yes_lose_data)
    current = reshard.read_state(store)
    if current is not None:
        if current.value.request == {"command": "rebalance", "drain": drain}:
            return {"plan": None, **resume_or_abort(store, options, abort=False, reporter=reporter)}
        raise reshard.in_progress_error(current.value)
    assigned = assign_unowned_first(store, drain)
    plan = plan_rebalance(store, drain)
    out = start_or_resume(store, plan, options, no_data=no_data, reporter=reporter)
    out["unowned_assigned"] = assigned
    return out


def render_result(out: dict[str, Any]) -> str:
    if "message" in out:
        return out["message"]
    lines = []
    if out.get("unowned_assigned"):
        got = out["unowned_assigned"]
        lines.append(f"assigned {sum(got.values())} unowned slots: " + ", ".join(f"{g} +{n}" for g, n in got.items()))
    if out["status"] == "nothing to do":
        request = out.get("request") or {}
        lines.append(f"{request['to']} already owns every slot asked for; nothing to do"
                     if request.get("command") == "reshard" else "slot ownership is already even; nothing to do")
        return "\n".join(lines)
    rate = f" ({out['keys_per_second']:,} keys/s while moving)" if out.get("keys_per_second") else ""
    verb = "aborted: finished the marked step" if out["status"] == "aborted" else "moved"
    lines.append(f"{verb} {out['slots_moved']} slots and {out['keys_moved']} keys in {out['seconds']:g}s{rate}")
    if out.get("keys_deleted"):
        lines.append(f"dropped {out['keys_deleted']} keys of the moved slots from their old owners (--no-data)")
    return "\n".join(lines)


class ProgressBar(reshard.Reporter):
    """A click progress bar on stderr: slots moved as the bar, keys moved as its label."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.shown = 0

    def start(self, total_slots: int, slots_done: int, keys: int) -> None:
        self.keys = keys
        self.bar = click.progressbar(length=total_slots, label="resharding", file=sys.stderr,
                                     show_pos=True, item_show_func=lambda _: f"{self.keys:,} keys")
        self.bar.__enter__()
        self.update(slots_done, keys)

    def update(self, slots_done: int, keys: int) -> None:
        if self.bar is None:
            return
        self.keys = keys
        self.bar.update(max(0, slots_done - self.shown), current_item=keys)
        self.shown = max(self.shown, slots_done)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
