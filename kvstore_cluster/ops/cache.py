"""Cache-mode repairs: remove a failed group (its slots spread, the group down), rejoin a recovered one after FLUSHALL.

The sentinel leader removes groups and, with ``--auto-rejoin``, rejoins them; ``kvstore-admin
group rejoin`` rejoins too (docs/design.md, "Cache mode").
"""

from __future__ import annotations

import structlog

from kvstore_cluster import paths
from kvstore_cluster.model import ModelError
from kvstore_cluster.node import NodeError
from kvstore_cluster.ops.cache_tables import drop_group, rejoin_plan
from kvstore_cluster.ops.context import Context
from kvstore_cluster.ops.errors import RejoinError
from kvstore_cluster.ops.fence import Fence
from kvstore_cluster.store import Delete, Set

log = structlog.get_logger("kvstore.ops.cache")


async def remove_group(ctx: Context, fence: Fence, group_id: str, down: set[str]) -> bool:
    """Spread ``group_id``'s slots over the healthy groups and mark it down, in one transaction.

    Returns False when there is nothing to do, or when it is the last healthy group: serving a
    slice of the cache from nothing is worse than waiting for its node.
    """
    groups_v = await ctx.zk(ctx.store.read_groups)
    slots_v = await ctx.zk(ctx.store.read_slots)
    group = groups_v.value.get(group_id)
    if group is None or group.state != "ok" or group.master not in down:
        return False
    healthy = [g.id for g in groups_v.value if g.state == "ok" and g.master not in down and g.id != group_id]
    if not healthy:
        return False
    new_groups, new_slots, dropped = drop_group(groups_v.value, slots_v.value, group_id, healthy)
    # A reshard whose marks are dropped cannot go on (its slots were just reassigned): its record
    # goes in the same transaction, so no one resumes it and moves keys where no owner is.
    reshard = await ctx.zk(ctx.store.client.exists, paths.reshard(ctx.store.cluster)) if dropped else None
    fence.check()
    await ctx.zk(ctx.store.commit, [
        Set(paths.groups(ctx.store.cluster), new_groups.encode(), groups_v.version),
        Set(paths.slots(ctx.store.cluster), new_slots.encode(), slots_v.version),
        *([Delete(paths.reshard(ctx.store.cluster), reshard.version)] if reshard is not None else []),
        *fence.zk_checks(),
    ])
    moved = slots_v.value.counts().get(group_id, 0)
    log.warning("group_removed", group=group_id, master=group.master, slots_moved=moved, to=healthy)
    ctx.report("failover", group=group_id, result="removed", master=group.master, seconds=None)
    for m in dropped:
        log.warning("migration_dropped", lo=m.lo, hi=m.hi, source=m.source, target=m.target,
                    reason=f"group {group_id} failed; the reshard was cancelled, run rebalance again")
    return True


async def rejoin(ctx: Context, fence: Fence, group_id: str) -> int:
    """FLUSHALL the group's node(s), then mark the group ok (owning only slots nobody owned).

    The flush comes first: the node must hold no stale key by the time proxies route to it. Slots
    with keys reach it only through the data-moving rebalance, so no healthy group loses keys.
    Returns the slots it owns afterwards; raises ``RejoinError`` with a readable reason.
    """
    meta_v = await ctx.zk(ctx.store.read_meta)
    if meta_v.value.mode != "cache":
        raise RejoinError(f"cluster {ctx.store.cluster!r} is in {meta_v.value.mode} mode; "
                          "rejoin flushes data and is for cache mode only")
    groups_v = await ctx.zk(ctx.store.read_groups)
    slots_v = await ctx.zk(ctx.store.read_slots)
    group = groups_v.value.get(group_id)
    if group is None:
        raise RejoinError(f"no group {group_id!r}")
    if group.state != "down":
        raise RejoinError(f"group {group_id!r} is {group.state}, not down; nothing to rejoin")
    for addr in group.nodes:
        fence.check()
        async with ctx.node(addr) as node:
            try:
                await node.flushall()
            except NodeError as exc:
                raise RejoinError(f"cannot flush {addr}: {exc}") from None
    try:
        new_groups, new_slots = rejoin_plan(groups_v.value, slots_v.value, group_id)
    except ModelError as exc:
        raise RejoinError(str(exc)) from None
    fence.check()
    await ctx.zk(ctx.store.commit, [
        Set(paths.groups(ctx.store.cluster), new_groups.encode(), groups_v.version),
        Set(paths.slots(ctx.store.cluster), new_slots.encode(), slots_v.version),
        *fence.zk_checks(),
    ])
    owned = new_slots.counts().get(group_id, 0)
    log.warning("group_rejoined", group=group_id, master=group.master, slots=owned, flushed=list(group.nodes),
                hint="run 'kvstore-admin rebalance' to give it a fair share of slots with their keys")
    return owned
