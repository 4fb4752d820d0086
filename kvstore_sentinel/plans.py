"""Pure cache-mode plans: drop a failed group's slots onto the healthy ones, give a rejoining group its share."""

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


def rejoin_share(groups: Groups, slots: SlotTable, group_id: str,
                 healthy: list[str]) -> tuple[Groups, SlotTable]:
    """Mark ``group_id`` ok and give it an even share of slots, taken evenly from the ``healthy`` groups.

    Each donor gives up the top end of its slots (contiguous runs); slots under migration stay put.
    """
    group = groups.get(group_id)
    if group is None:
        raise ModelError(f"no group {group_id!r}")
    members = [g for g in healthy if g != group_id] + [group_id]
    owners = list(slots.owners())
    migrating = {s for m in slots.migrating for s in range(m.lo, m.hi + 1)}
    for s, o in enumerate(owners):
        if o is None:
            owners[s] = group_id  # unowned slots go to the newcomer first
    counts = {g: 0 for g in members}
    for o in owners:
        if o in counts:
            counts[o] += 1
    total = sum(counts.values())
    base, extra = divmod(total, len(members))
    # The newcomer gets the larger share when the split is uneven: it is the one that is short.
    order = [group_id] + [g for g in members if g != group_id]
    target = {g: base + (1 if i < extra else 0) for i, g in enumerate(order)}
    for donor in members:
        surplus = counts[donor] - target[donor]
        if donor == group_id or surplus <= 0:
            continue
        for s in range(len(owners) - 1, -1, -1):
            if surplus == 0:
                break
            if owners[s] == donor and s not in migrating:
                owners[s] = group_id
                surplus -= 1
    table = SlotTable.from_owners(owners, slots.migrating)
    return groups.put(replace(group, state="ok")), table
