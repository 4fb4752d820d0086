"""Datastore-mode failover: promote the most up-to-date replica, as a state machine resumable from ``failover/<group>``.

```
start ──► failover/<g> = {step: promote, candidate}   + groups: g failing_over   (one transaction)
      ──► REPLICAOF NO ONE on candidate   ──► record step: repoint
      ──► REPLICAOF candidate on the others ──► record step: commit
      ──► groups: master = candidate, old master appended to replicas, state ok
          + delete failover/<g>                                                  (one transaction)
```
Each step is recorded *before* it is taken and is idempotent, so a new sentinel leader re-runs
the recorded step and carries on (docs/design.md, "Failover").
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import structlog

from kvstore_cluster import paths
from kvstore_cluster.failover_record import FailoverRecord
from kvstore_cluster.model import Group
from kvstore_cluster.node import NodeError
from kvstore_cluster.ops.context import Context
from kvstore_cluster.ops.fence import Fence
from kvstore_cluster.store import Create, Delete, Set, Versioned

log = structlog.get_logger("kvstore.ops.failover")


async def _offsets(ctx: Context, addresses: list[str]) -> dict[str, int]:
    """Replication offset of each reachable replica (fresh INFO, not a probe's cached one)."""

    async def one(addr: str) -> tuple[str, int | None]:
        async with ctx.node(addr) as node:
            try:
                info = await node.replication()
            except NodeError as exc:
                log.info("candidate_unreachable", node=addr, error=str(exc))
                return addr, None
            return addr, info.offset

    results = await asyncio.gather(*(one(a) for a in addresses))
    return {a: o for a, o in results if o is not None}


async def choose_candidate(ctx: Context, replicas: list[str], down: set[str]) -> str | None:
    """The healthy replica with the highest replication offset (ties: the first listed)."""
    offsets = await _offsets(ctx, [r for r in replicas if r not in down])
    if not offsets:
        return None
    return max(offsets, key=lambda a: (offsets[a], -replicas.index(a)))


async def start_failover(ctx: Context, fence: Fence, group_id: str, down: set[str]) -> bool:
    """Begin failing over ``group_id`` whose master is down; return False if nothing could start."""
    groups_v = await ctx.zk(ctx.store.read_groups)
    group = groups_v.value.get(group_id)
    if group is None or group.master not in down:
        return False
    candidate = await choose_candidate(ctx, list(group.replicas), down)
    groups_path = paths.groups(ctx.store.cluster)
    if candidate is None:
        if group.state != "down":
            fence.check()
            await ctx.zk(ctx.store.commit, [
                Set(groups_path, groups_v.value.put(replace(group, state="down")).encode(), groups_v.version),
                *fence.zk_checks(),
            ])
            log.error("group_down_no_replica", group=group_id, master=group.master,
                      replicas=list(group.replicas), action="marked down, not promoted")
            ctx.report("failover", group=group_id, result="no_replica", master=group.master, seconds=None)
        return False
    record = FailoverRecord(kind="failover", group=group_id, old_master=group.master, candidate=candidate,
                            step="promote", by=ctx.actor)
    fence.check()
    await ctx.zk(ctx.store.commit, [
        Create(paths.failover(ctx.store.cluster, group_id), record.encode()),
        Set(groups_path, groups_v.value.put(replace(group, state="failing_over")).encode(), groups_v.version),
        *fence.zk_checks(),
    ])
    log.warning("failover_started", group=group_id, old_master=group.master, candidate=candidate)
    await ctx.hook("promote", group=group_id)
    await resume_failover(ctx, fence, Versioned(record, 0))
    return True


async def _record_step(ctx: Context, fence: Fence, current: Versioned[FailoverRecord],
                       step: str) -> Versioned[FailoverRecord]:
    record = current.value.at_step(step)
    fence.check()
    path = paths.failover(ctx.store.cluster, record.group)
    await ctx.zk(ctx.store.commit, [Set(path, record.encode(), current.version), *fence.zk_checks()])
    await ctx.hook(step, group=record.group)
    return Versioned(record, current.version + 1)


async def resume_failover(ctx: Context, fence: Fence, current: Versioned[FailoverRecord]) -> None:
    """Carry a recorded failover on from its recorded step to the end."""
    record = current.value
    group_id, candidate, old_master = record.group, record.candidate, record.old_master
    path = paths.failover(ctx.store.cluster, group_id)
    while True:
        step = current.value.step
        if step == "promote":
            fence.check()
            async with ctx.node(candidate) as node:
                try:
                    await node.promote()
                except NodeError as exc:
                    log.error("failover_promote_failed", group=group_id, candidate=candidate, error=str(exc))
                    await _abandon(ctx, fence, group_id, current.version, reason=str(exc))
                    ctx.report("failover", group=group_id, result="abandoned", master=old_master,
                               seconds=record.age)
                    return
            log.warning("replica_promoted", group=group_id, node=candidate)
            current = await _record_step(ctx, fence, current, "repoint")
        elif step == "repoint":
            groups_v = await ctx.zk(ctx.store.read_groups)
            group = groups_v.value.get(group_id)
            others = [n for n in (group.replicas if group else ()) if n not in (candidate, old_master)]
            for addr in others:
                fence.check()
                async with ctx.node(addr) as node:
                    try:
                        await node.follow(candidate)
                        log.info("replica_repointed", group=group_id, node=addr, master=candidate)
                    except NodeError as exc:
                        # The reconciler retries later; a broken replica must not block the failover.
                        log.error("replica_repoint_failed", group=group_id, node=addr, master=candidate,
                                  error=str(exc))
            current = await _record_step(ctx, fence, current, "commit")
        else:  # commit
            groups_v = await ctx.zk(ctx.store.read_groups)
            group = groups_v.value.get(group_id)
            if group is None:
                log.error("failover_group_vanished", group=group_id)
                fence.check()
                await ctx.zk(ctx.store.commit, [Delete(path, current.version), *fence.zk_checks()])
                ctx.report("failover", group=group_id, result="group_removed", master=old_master, seconds=record.age)
                return
            # The old master goes last: it is the one expected back later, as a replica.
            replicas = (*(n for n in group.nodes if n not in (candidate, old_master)), old_master)
            new_group = Group(group_id, candidate, replicas, "ok", group.tls)
            fence.check()
            await ctx.zk(ctx.store.commit, [
                Set(paths.groups(ctx.store.cluster), groups_v.value.put(new_group).encode(), groups_v.version),
                Delete(path, current.version),
                *fence.zk_checks(),
            ])
            log.warning("failover_done", group=group_id, master=candidate, old_master=old_master,
                        seconds=round(record.age, 3))
            ctx.report("failover", group=group_id, result="promoted", master=old_master, seconds=record.age)
            return


async def _abandon(ctx: Context, fence: Fence, group_id: str, version: int, reason: str) -> None:
    """Drop a failover that cannot promote its candidate; the next round starts over with a fresh choice."""
    groups_v = await ctx.zk(ctx.store.read_groups)
    group = groups_v.value.get(group_id)
    ops: list[Any] = [Delete(paths.failover(ctx.store.cluster, group_id), version)]
    if group is not None and group.state == "failing_over":
        ops.append(Set(paths.groups(ctx.store.cluster), groups_v.value.put(replace(group, state="ok")).encode(),
                       groups_v.version))
    fence.check()
    await ctx.zk(ctx.store.commit, [*ops, *fence.zk_checks()])
    log.warning("failover_abandoned", group=group_id, reason=reason)

