"""Pure reshard planning: fewest moves, draining, even splits, step cutting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore_cluster.model import Migration, even_split
from kvstore_cluster.ops.errors import PlanError
from kvstore_cluster.ops.slot_moves import apply_moves, cut_step, rebalance_moves, reshard_moves, split_steps
from kvstore_cluster.slots import SLOT_COUNT


def owners_of(ranges: list[tuple[int, int, str]]) -> list[str | None]:
    out: list[str | None] = [None] * SLOT_COUNT
    for lo, hi, g in ranges:
        out[lo: hi + 1] = [g] * (hi - lo + 1)
    return out


def counts(owners: list[str | None], groups: list[str]) -> dict[str, int]:
    return {g: sum(1 for o in owners if o == g) for g in groups}


def lower_bound(before: dict[str, int]) -> int:
    """Slots any plan must move so that counts differ by at most one (computed independently)."""
    total = sum(before.values())
    base, extra = divmod(total, len(before))
    above = sum(1 for c in before.values() if c > base)
    return sum(max(0, c - base) for c in before.values()) - min(extra, above)


def test_reshard_moves_only_slots_the_target_does_not_own() -> None:
    owners = owners_of(even_split(["g1", "g2"]))  # g1 0-8191, g2 8192-16383
    moves = reshard_moves(owners, [(8000, 8300)], "g2")
    assert moves == [Migration(8000, 8191, "g1", "g2")]


def test_reshard_moves_from_several_sources_are_separate_moves() -> None:
    owners = owners_of(even_split(["g1", "g2", "g3"]))
    moves = reshard_moves(owners, [(5000, 6000), (12000, 12001)], "g2")
    assert moves == [Migration(5000, 5461, "g1", "g2"), Migration(12000, 12001, "g3", "g2")]


def test_reshard_refuses_unowned_slots() -> None:
    owners = owners_of([(0, 99, "g1")])
    with pytest.raises(PlanError, match="slots 100-199 have no owner"):
        reshard_moves(owners, [(50, 199)], "g2")


def test_rebalance_gives_a_new_group_its_fair_share_and_nothing_else_moves() -> None:
    owners = owners_of(even_split(["g1", "g2", "g3"]))
    moves = rebalance_moves(owners, ["g1", "g2", "g3", "g4"])
    after = apply_moves(owners, moves)
    c = counts(after, ["g1", "g2", "g3", "g4"])
    assert c == {"g1": 4096, "g2": 4096, "g3": 4096, "g4": 4096}
    assert sum(m.size for m in moves) == 4096
    assert {m.target for m in moves} == {"g4"}


def test_rebalance_of_an_even_cluster_moves_nothing() -> None:
    owners = owners_of(even_split(["g1", "g2", "g3"]))
    assert rebalance_moves(owners, ["g1", "g2", "g3"]) == []


def test_drain_moves_every_slot_of_the_group_evenly_to_the_others() -> None:
    owners = owners_of(even_split(["g1", "g2", "g3"]))
    moves = rebalance_moves(owners, ["g1", "g2", "g3"], drain="g2")
    after = apply_moves(owners, moves)
    c = counts(after, ["g1", "g2", "g3"])
    assert c == {"g1": 8192, "g2": 0, "g3": 8192}
    assert {m.source for m in moves} == {"g2"}


def test_drain_needs_another_ok_group() -> None:
    with pytest.raises(PlanError, match="no other group"):
        rebalance_moves(owners_of([(0, SLOT_COUNT - 1, "g1")]), ["g1"], drain="g1")
    with pytest.raises(PlanError, match="not a group in state ok"):
        rebalance_moves(owners_of([(0, SLOT_COUNT - 1, "g1")]), ["g1"], drain="g9")


def test_slots_of_groups_not_ok_and_unowned_slots_stay_put() -> None:
    owners = owners_of([(0, 999, "down1"), (1000, 9999, "g1")])
    moves = rebalance_moves(owners, ["g1", "g2"])
    after = apply_moves(owners, moves)
    assert after[:1000] == ["down1"] * 1000
    assert after[10000:] == [None] * (SLOT_COUNT - 10000)
    assert counts(after, ["g1", "g2"]) == {"g1": 4500, "g2": 4500}


def test_split_steps_cuts_ranges_to_the_step_size_and_keeps_every_slot() -> None:
    moves = [Migration(0, 2499, "g1", "g2"), Migration(3000, 3099, "g3", "g2")]
    steps = split_steps(moves, 1000)
    # Every step moves from both sources at once, an even share of each.
    assert [sum(m.size for m in s) for s in steps] == [868, 866, 866]
    assert steps[0] == [Migration(0, 833, "g1", "g2"), Migration(3000, 3033, "g3", "g2")]
    assert steps[2] == [Migration(1667, 2499, "g1", "g2"), Migration(3067, 3099, "g3", "g2")]
    assert sorted(s for step in steps for m in step for s in range(m.lo, m.hi + 1)) == \
        sorted([*range(0, 2500), *range(3000, 3100)])
    # One pair: consecutive steps, as even as the step size allows.
    assert [[(m.lo, m.hi) for m in s] for s in split_steps([Migration(0, 2599, "g1", "g2")], 1000)] == \
        [[(0, 866)], [(867, 1733)], [(1734, 2599)]]
    # Shares never push a step past the step size.
    many = [Migration(i * 10, i * 10 + 6, f"g{i}", "g9") for i in range(8)]
    assert all(sum(m.size for m in s) <= 10 for s in split_steps(many, 10))
    assert sum(m.size for s in split_steps(many, 10) for m in s) == 56


def test_cut_step_takes_a_share_of_every_pair_first_and_keeps_the_rest_whole() -> None:
    step = [Migration(0, 999, "g1", "g3"), Migration(5000, 5499, "g2", "g3")]
    head, rest = cut_step(step, 30)
    assert sum(m.size for m in head) <= 30 and {m.source for m in head} == {"g1", "g2"}
    assert rest == [Migration(head[0].hi + 1, 999, "g1", "g3"), Migration(head[1].hi + 1, 5499, "g2", "g3")]
    assert sorted(s for m in head + rest for s in range(m.lo, m.hi + 1)) == [*range(0, 1000), *range(5000, 5500)]
    # Fewer slots than pairs: one pair at a time (a share of each would never fit).
    assert cut_step(step, 1) == ([Migration(0, 0, "g1", "g3")], [Migration(1, 999, "g1", "g3"), *step[1:]])
    assert [len(s) for s in split_steps(step, 1)] == [1] * 1500
    # A step already small enough has no rest.
    assert cut_step(step, 1500) == (sorted(step, key=lambda m: m.lo), [])


GROUPS = [f"g{i}" for i in range(1, 7)]


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[str | None], list[str], str | None]:
    """Random ownership: random cut points, each run owned by a random group (some unowned)."""
    n_groups = draw(st.integers(1, 6))
    groups = GROUPS[:n_groups]
    cuts = sorted(set(draw(st.lists(st.integers(1, SLOT_COUNT - 1), max_size=30))))
    bounds = [0, *cuts, SLOT_COUNT]
    owners: list[str | None] = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        owner = draw(st.sampled_from([*groups, None, "other"]))
        owners.extend([owner] * (hi - lo))
    drain = draw(st.none() | st.sampled_from(groups)) if n_groups > 1 else None
    return owners, groups, drain


@settings(max_examples=150, deadline=None)
@given(clusters())
def test_rebalance_plan_is_even_and_minimal(case: tuple[list[str | None], list[str], str | None]) -> None:
    """After the plan, ok groups' counts differ by at most one and no plan could move fewer slots."""
    owners, groups, drain = case
    moves = rebalance_moves(owners, groups, drain)
    after = apply_moves(owners, moves)
    receivers = [g for g in groups if g != drain]
    c = counts(after, receivers)
    assert max(c.values()) - min(c.values()) <= 1
    # Nothing outside the ok groups changes hands.
    for before, now in zip(owners, after, strict=True):
        if before not in groups:
            assert now == before
    moved = sum(m.size for m in moves)
    if drain is None:
        assert moved == lower_bound(counts(owners, groups))
    else:
        assert counts(after, [drain]) == {drain: 0}
        # The drained group's slots must all move; receivers lose nothing unless they are over their share.
        before = counts(owners, receivers)
        total = sum(before.values()) + counts(owners, [drain])[drain]
        base, extra = divmod(total, len(receivers))
        above = sum(1 for v in before.values() if v > base)
        must = counts(owners, [drain])[drain] + sum(max(0, v - base) for v in before.values()) - min(extra, above)
        assert moved == must
    # Moves are disjoint ranges.
    seen: set[int] = set()
    for m in moves:
        r = set(range(m.lo, m.hi + 1))
        assert not (r & seen)
        seen |= r
