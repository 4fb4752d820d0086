"""What ``reshard`` and ``rebalance`` print: the plan, the result, a progress bar while keys move."""

from __future__ import annotations

import sys
from typing import Any

import click

from kvstore_admin.errors import RESHARD_STOPPED, USER_ERROR
from kvstore_cluster.ops.rebalance import Plan
from kvstore_cluster.ops.reshard import Reporter
from kvstore_cluster.ops.slot_moves import summarize
from kvstore_cluster.reshard_state import ReshardProgress
from kvstore_cluster.slots import format_slot_ranges

EXIT_CODES_HELP = f"""\b
Reshard exit codes (besides the ones of every command):
  {USER_ERROR}  bad request, or a reshard is already in progress (use --resume or --abort)
  {RESHARD_STOPPED}  the reshard stopped part-way (a proxy did not ack, MIGRATE failed, BUSYKEY);
      its state is kept: fix the cause, then --resume (or --abort)
"""


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
    rate = f" = {out['keys_per_second']:,} keys/s" if out.get("keys_per_second") else ""
    verb = "aborted: finished the marked step" if out["status"] == "aborted" else "moved"
    size = _size(out.get("bytes_moved", 0))
    lines.append(f"{verb} {out['slots_moved']} slots and {out['keys_moved']:,} keys ({size}) "
                 f"in {out['seconds']:g}s{rate}")
    if out.get("keys_moved"):
        big = f", {out['big_keys_moved']} big key(s) in pieces" if out.get("big_keys_moved") else ""
        lines.append(f"longest stall of a server: {out.get('longest_stall_ms', 0):g} ms{big}; "
                     f"{out.get('scan_passes', 0)} SCAN pass(es) over the sources")
    if out.get("keys_deleted"):
        lines.append(f"dropped {out['keys_deleted']} keys of the moved slots from their old owners (--no-data)")
    return "\n".join(lines)


def progress_text(p: dict[str, Any]) -> str:
    """One line of live figures: keys moved of the expected total, keys/s, ETA, longest stall."""
    eta = "-" if p.get("eta_seconds") is None else f"{p['eta_seconds']:.0f}s"
    return (f"{p['keys_moved']:,}/~{p['keys_total']:,} keys, {p['keys_per_second']:,.0f} keys/s, ETA {eta}, "
            f"longest stall {p['longest_stall_ms']:g} ms")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


class ProgressBar(Reporter):
    """A click progress bar on stderr: slots done as the bar, the live figures as its label."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.shown = 0
        self.label = ""

    def start(self, total_slots: int, slots_done: int, keys: int) -> None:
        self.bar = click.progressbar(length=total_slots, label="resharding", file=sys.stderr, show_pos=True,
                                     show_eta=False, item_show_func=lambda _: self.label)
        self.bar.__enter__()
        self.label = f"{keys:,} keys"
        self.bar.update(max(0, slots_done - self.shown), current_item=self.label)
        self.shown = max(self.shown, slots_done)

    def update(self, slots_done: int, progress: ReshardProgress) -> None:
        if self.bar is None:
            return
        self.label = progress_text(progress.to_json())
        self.bar.update(max(0, slots_done - self.shown), current_item=self.label)
        self.shown = max(self.shown, slots_done)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
