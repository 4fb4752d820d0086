"""Pure plans and verdicts: slot spreading, rejoin shares, quorum votes, INFO parsing."""

from __future__ import annotations

import pytest

from kvstore_cluster.model import Group, Groups, Migration, ModelError, SlotTable, even_split
from kvstore_cluster.node import parse_info, replication_info
from kvstore_cluster.ops.cache_tables import drop_group, rejoin_plan
from kvstore_cluster.sentinel_view import SentinelView, fresh_views
from kvstore_cluster.slots import SLOT_COUNT
from kvstore_sentinel.quorum import objectively_down


def _cluster(n: int) -> tuple[Groups, SlotTable]:
    groups = Groups(tuple(Group(f"g{i}", f"127.0.0.1:{7000 + i}") for i in range(1, n + 1)))
    return groups, SlotTable(tuple(even_split(groups.ids())))


def test_drop_group_spreads_its_slots_evenly_and_marks_it_down():
    groups, slots = _cluster(3)
    new_groups, table, dropped = drop_group(groups, slots, "g1", ["g2", "g3"])
    counts = table.counts()
    assert set(counts) == {"g2", "g3"}
    assert abs(counts["g2"] - counts["g3"]) <= 1
    assert sum(counts.values()) == SLOT_COUNT
    assert new_groups.get("g1").state == "down"
    assert dropped == ()
    # slots the survivors already owned never move
    for s, owner in enumerate(slots.owners()):
        if owner != "g1":
            assert table.owner(s) == owner


def test_drop_group_refuses_to_remove_the_last_healthy_group():
    groups, slots = _cluster(2)
    with pytest.raises(ModelError, match="last healthy group"):
        drop_group(groups, slots, "g1", ["g1"])


def test_drop_group_drops_migrations_that_involve_the_failed_group():
    groups, slots = _cluster(3)
    lo, hi = slots.ranges_of("g1")[0]
    lo2, _ = slots.ranges_of("g2")[0]
    migrating = (Migration(lo, lo + 9, "g1", "g2"), Migration(lo2, lo2 + 4, "g2", "g3"))
    slots = slots.with_migrating(migrating)
    _, table, dropped = drop_group(groups, slots, "g1", ["g2", "g3"])
    assert dropped == (migrating[0],)
    assert table.migrating == (migrating[1],)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_rejoin_marks_the_group_ok_and_takes_no_slot_from_a_healthy_group(n):
    groups, slots = _cluster(n)
    healthy = [g for g in groups.ids() if g != "g1"]
    down_groups, dropped, _ = drop_group(groups, slots, "g1", healthy)
    back, table = rejoin_plan(down_groups, dropped, "g1")
    assert back.get("g1").state == "ok"
    assert table.owners() == dropped.owners()  # healthy groups keep every slot, and so their keys


def test_rejoin_takes_unowned_slots_only():
    groups, slots = _cluster(2)
    down_groups, table, _ = drop_group(groups, slots, "g1", ["g2"])
    table = SlotTable.from_owners([None if s < 10 else o for s, o in enumerate(table.owners())])
    _, after = rejoin_plan(down_groups, table, "g1")
    assert after.counts() == {"g1": 10, "g2": SLOT_COUNT - 10}


def test_quorum_counts_only_fresh_views():
    n1, n2, n3 = "10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"
    views = {
        "a": SentinelView("a", 100.0, True, {n1: 1.0, n2: 1.0}),
        "b": SentinelView("b", 99.5, False, {n1: 1.0}),
        "c": SentinelView("c", 10.0, False, {n2: 1.0, n3: 1.0}),  # stale
    }
    fresh = fresh_views(views, stale_after=5, now=100.0)
    assert set(fresh) == {"a", "b"}
    assert objectively_down(fresh, quorum=2) == {n1: 2}
    assert objectively_down(fresh, quorum=1) == {n1: 2, n2: 1}


@pytest.mark.parametrize(
    ("fields", "role", "offset", "master", "link_up"),
    [
        ({"role": "master", "connected_slaves": "0", "master_repl_offset": "42"}, "master", 42, None, None),
        ({"role": "slave", "master_host": "10.0.0.1", "master_port": "6379", "master_link_status": "down",
          "slave_repl_offset": "7"}, "replica", 7, "10.0.0.1:6379", False),
        (parse_info("# Replication\r\nrole:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:6379\r\n"
                    "master_link_status:up\r\nslave_repl_offset:7\r\n\r\n"), "replica", 7, "10.0.0.1:6379", True),
    ],
)
def test_info_replication_is_parsed(fields, role, offset, master, link_up):
    info = replication_info(fields)
    assert (info.role, info.offset, info.master, info.link_up) == (role, offset, master, link_up)


@pytest.mark.parametrize("fields", [{}, {"role": "sentinel"}, {"role": "master", "master_repl_offset": "x"}])
def test_unusable_info_is_refused(fields):
    with pytest.raises(ValueError):
        replication_info(fields)
