"""The table changes of cache-mode repairs (pure): drop a failed group's slots onto the healthy ones, rejoin a group."""

from __future__ import annotations

from dataclasses import replace

from kvstore_cluster.model import Groups, Migration, ModelError, SlotTable, assign_unowned


def drop_group(groups: Groups, slots: SlotTable, group_id: str,
               healthy: list[str]) -> tuple[Groups, SlotTable, tuple[Migration, ...]]:
    """Mark ``group_id`` down and spread its slots evenly over ``healthy``.

    Returns the new tables and the migrations that had to be dropped because they involved the
    failed group (a migration from or to a dead cache node cannot finish; the reshard must restart).
    """
    group = groups.get(group_id)
    if group is None:
        raise ModelError(f"no group {group_id!r}")
    targets = [g for g in healthy if g != group_id]
    if not targets:
        raise ModelError(f"refusing to remove {group_id!r}: it is the last healthy group")
    kept = tuple(m for m in slots.migrating if group_id not in (m.source, m.target))
    dropped = tuple(m for m in slots.migrating if m not in kept)
    owners = [None if o == group_id else o for o in slots.owners()]
    table = assign_unowned(SlotTable.from_owners(owners, kept), targets)
    return groups.put(replace(group, state="down")), table, dropped


def rejoin_plan(groups: Groups, slots: SlotTable, group_id: str) -> tuple[Groups, SlotTable]:
    """Mark ``group_id`` ok; it takes only unowned slots (which hold no keys anywhere).

    It takes no slot from a healthy group: that group's keys of the slot would be lost, and a cache
    loses only the failed node's keys. A fair share comes from the data-moving
    ``kvstore-admin rebalance``.
    """
    group = groups.get(group_id)
    if group is None:
        raise ModelError(f"no group {group_id!r}")
    owners: list[str | None] = [group_id if o is None else o for o in slots.owners()]
    return groups.put(replace(group, state="ok")), SlotTable.from_owners(owners, slots.migrating)
