"""Reshard planning (pure): which slots move from which group to which, cut into steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvstore_cluster.model import Migration
from kvstore_cluster.ops.errors import PlanError
from kvstore_cluster.slots import format_slot_ranges, slots_to_ranges


def _moves_from_pairs(pairs: dict[tuple[str, str], list[int]]) -> list[Migration]:
    out: list[Migration] = []
    for (source, target), slots in pairs.items():
        out.extend(Migration(lo, hi, source, target) for lo, hi in slots_to_ranges(slots))
    return sorted(out, key=lambda m: (m.lo, m.source, m.target))


def reshard_moves(owners: Sequence[str | None], ranges: Sequence[tuple[int, int]], target: str) -> list[Migration]:
    """Migrations that give every slot of ``ranges`` to ``target``; slots it already owns are skipped.

    Unowned slots are refused: there is no source to take their keys from ('rebalance' assigns them).
    """
    pairs: dict[tuple[str, str], list[int]] = {}
    unowned = []
    for lo, hi in ranges:
        for s in range(lo, hi + 1):
            owner = owners[s]
            if owner is None:
                unowned.append(s)
            elif owner != target:
                pairs.setdefault((owner, target), []).append(s)
    if unowned:
        raise PlanError(f"slots {format_slot_ranges(slots_to_ranges(unowned))} have no owner; "
                        "give them one first with 'kvstore-admin rebalance'")
    return _moves_from_pairs(pairs)


def fair_targets(counts: dict[str, int], total: int) -> dict[str, int]:
    """Slot count each group should end with: ``total`` split evenly (sizes differ by at most one).

    The groups that already hold the most get the larger shares, so the fewest slots move.
    """
    if not counts:
        return {}
    base, extra = divmod(total, len(counts))
    order = sorted(counts, key=lambda g: (-counts[g], g))
    return {g: base + (1 if i < extra else 0) for i, g in enumerate(order)}


def rebalance_moves(owners: Sequence[str | None], groups: Sequence[str], drain: str | None = None) -> list[Migration]:
    """The fewest moves that even out slot ownership among ``groups`` (the groups in state ok).

    Slots owned by groups not in ``groups`` (failing over, down) and unowned slots stay put.
    With ``drain``, that group (which must be in ``groups``) gives all its slots to the others,
    which end up even among themselves.
    """
    if drain is not None and drain not in groups:
        raise PlanError(f"cannot drain {drain!r}: not a group in state ok")
    receivers = [g for g in groups if g != drain]
    if not receivers:
        raise PlanError("no other group in state ok to move the slots to")
    counts = {g: 0 for g in groups}
    held: dict[str, list[int]] = {g: [] for g in groups}
    for s, owner in enumerate(owners):
        if owner in counts:
            counts[owner] += 1
            held[owner].append(s)
    total = sum(counts.values())
    targets = fair_targets({g: counts[g] for g in receivers}, total)
    if drain is not None:
        targets[drain] = 0
    # Donors give their highest slots first so what stays with them stays contiguous; receivers
    # are filled in order, so each gets long runs.
    give: list[tuple[int, str]] = []
    for g in groups:
        excess = counts[g] - targets[g]
        if excess > 0:
            give.extend((s, g) for s in held[g][len(held[g]) - excess:])
    give.sort()
    pairs: dict[tuple[str, str], list[int]] = {}
    pos = 0
    for g in receivers:
        want = targets[g] - counts[g]
        for s, source in give[pos: pos + max(0, want)]:
            pairs.setdefault((source, g), []).append(s)
        pos += max(0, want)
    return _moves_from_pairs(pairs)


def split_steps(moves: Sequence[Migration], slots_per_step: int) -> list[list[Migration]]:
    """Cut ``moves`` into steps of at most ``slots_per_step`` slots each (ranges split as needed).

    Each step is marked, moved and committed as a unit, so a smaller step keeps fewer slots in
    the slower migrating state at once; every step costs a proxy barrier. Every step takes an
    even share of each (source, target) pair's slots, so all sources move keys at once in every
    step (one source at a time would leave the others idle).
    """
    if slots_per_step < 1:
        raise PlanError("slots per step must be at least 1")
    pairs: dict[tuple[str, str], list[Migration]] = {}
    for m in moves:
        pairs.setdefault((m.source, m.target), []).append(m)
    total = sum(m.size for m in moves)
    if not total:
        return []
    if slots_per_step < len(pairs):  # a share of every pair would not fit in one step: one pair per step
        return [share for ms in pairs.values()
                for share in _take_shares(list(ms), -(-sum(m.size for m in ms) // slots_per_step))]
    nsteps = -(-total // slots_per_step)
    while True:
        steps = [_take_shares(list(ms), nsteps) for ms in pairs.values()]
        merged = [sorted((m for pair in steps for m in pair[i]), key=lambda m: (m.lo, m.source, m.target))
                  for i in range(nsteps)]
        if all(sum(m.size for m in step) <= slots_per_step for step in merged):
            return [step for step in merged if step]
        nsteps += 1  # shares rounded up in the same steps overflowed one: spread them thinner


def cut_step(step: Sequence[Migration], slots: int) -> tuple[list[Migration], list[Migration]]:
    """``step`` cut in two: a first part of at most ``slots`` slots (a share of every pair) and the rest.

    The executor cuts the step it marks next while clients are busy (ops/pace.py); the rest is
    cut again when its turn comes, or not, if the clients have gone.
    """
    parts = split_steps(step, slots)
    rest: dict[tuple[str, str], list[Migration]] = {}
    for m in sorted((m for part in parts[1:] for m in part), key=lambda m: (m.source, m.target, m.lo)):
        pair = rest.setdefault((m.source, m.target), [])
        if pair and pair[-1].hi + 1 == m.lo:
            pair[-1] = Migration(pair[-1].lo, m.hi, m.source, m.target)  # shares of one range: whole again
        else:
            pair.append(m)
    return parts[0], sorted((m for pair in rest.values() for m in pair), key=lambda m: (m.lo, m.source, m.target))


def _take_shares(moves: list[Migration], nsteps: int) -> list[list[Migration]]:
    """``moves`` (one pair's, in slot order) cut into ``nsteps`` consecutive shares, sizes differing by at most one."""
    size = sum(m.size for m in moves)
    base, extra = divmod(size, nsteps)
    out: list[list[Migration]] = []
    queue = list(moves)
    for i in range(nsteps):
        want = base + (1 if i < extra else 0)
        share: list[Migration] = []
        while want and queue:
            m = queue[0]
            take = min(want, m.size)
            share.append(Migration(m.lo, m.lo + take - 1, m.source, m.target))
            if take == m.size:
                queue.pop(0)
            else:
                queue[0] = Migration(m.lo + take, m.hi, m.source, m.target)
            want -= take
        out.append(share)
    return out


def apply_moves(owners: Sequence[str | None], moves: Sequence[Migration]) -> list[str | None]:
    """The owners after ``moves`` (for dry runs and tests)."""
    out = list(owners)
    for m in moves:
        for s in range(m.lo, m.hi + 1):
            if out[s] != m.source:
                raise PlanError(f"slot {s} is owned by {out[s]!r}, not {m.source!r}")
            out[s] = m.target
    return out


def summarize(moves: Sequence[Migration]) -> dict[str, Any]:
    """Per (source, target) slot counts, for printing a plan."""
    pairs: dict[tuple[str, str], int] = {}
    for m in moves:
        pairs[(m.source, m.target)] = pairs.get((m.source, m.target), 0) + m.size
    return {
        "slots": sum(m.size for m in moves),
        "pairs": [{"source": s, "target": t, "slots": n} for (s, t), n in sorted(pairs.items())],
        "moves": [m.to_json() for m in moves],
    }
