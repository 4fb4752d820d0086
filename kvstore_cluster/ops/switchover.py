"""Manual switchover of a healthy group (``kvstore-admin failover GROUP [--to H:P]``) losing no acknowledged write.

```
record failover/<g> {kind: switchover, step: pause} + groups: g failing_over      (one transaction)
CLIENT PAUSE WRITE on the master ──► wait until the target's offset >= the master's
record step: promote ──► REPLICAOF NO ONE on the target
groups: master = target, old master appended to replicas, ok + delete the record  (one transaction)
REPLICAOF target on the old master and the other replicas ──► CLIENT UNPAUSE on the old master
```
Writes paused on the old master are answered only after it is a replica (``-READONLY``), never
acknowledged and then lost. If the admin dies half-way, the sentinel leader finishes or undoes it
(``recover_stale``) once the record is older than ``STALE_AFTER`` (docs/design.md, "Switchover").
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import structlog

from kvstore_cluster import paths
from kvstore_cluster.failover_record import FailoverRecord
from kvstore_cluster.model import Group
from kvstore_cluster.node import NodeError
from kvstore_cluster.ops.context import Context
from kvstore_cluster.ops.errors import SwitchoverError
from kvstore_cluster.ops.fence import Fence
from kvstore_cluster.store import Create, Delete, Set, Versioned

log = structlog.get_logger("kvstore.ops.switchover")

STALE_AFTER = 60.0  # seconds; longer than any pause, so a live admin is never overtaken


async def _pick_target(ctx: Context, group: Group, to: str | None) -> str:
    if to is not None:
        if to not in group.replicas:
            raise SwitchoverError(f"{to} is not a replica of group {group.id!r} (replicas: "
                                  f"{', '.join(group.replicas) or 'none'})")
        return to
    best: tuple[int, str] | None = None
    for addr in group.replicas:
        async with ctx.node(addr) as node:
            try:
                info = await node.replication()
            except NodeError:
                continue
        if info.role == "replica" and info.link_up and (best is None or info.offset > best[0]):
            best = (info.offset, addr)
    if best is None:
        raise SwitchoverError(f"group {group.id!r} has no healthy, connected replica to switch to")
    return best[1]


async def _wait_caught_up(ctx: Context, master: str, target: str, timeout: float) -> int:
    async with ctx.node(master) as node:
        goal = (await node.replication()).offset
    deadline = time.monotonic() + timeout
    async with ctx.node(target) as node:
        while True:
            info = await node.replication()
            if info.role == "replica" and info.offset >= goal:
                return goal
            if time.monotonic() >= deadline:
                raise SwitchoverError(f"{target} did not catch up with {master} within {timeout:g}s "
                                      f"(offset {info.offset} < {goal}); nothing was changed")
            await asyncio.sleep(0.01)


async def switchover(ctx: Context, fence: Fence, group_id: str, to: str | None = None, pause: float = 5.0) -> str:
    """Switch ``group_id``'s master to ``to`` (or the most up-to-date replica); return the new master."""
    groups_v = await ctx.zk(ctx.store.read_groups)
    group = groups_v.value.get(group_id)
    if group is None:
        raise SwitchoverError(f"no group {group_id!r}")
    if group.state != "ok":
        raise SwitchoverError(f"group {group_id!r} is {group.state}; a switchover needs a healthy group")
    target = await _pick_target(ctx, group, to)
    old = group.master
    path = paths.failover(ctx.store.cluster, group_id)
    record = FailoverRecord(kind="switchover", group=group_id, old_master=old, candidate=target, step="pause",
                            by=ctx.actor)
    fence.check()
    try:
        await ctx.zk(ctx.store.commit, [
            Create(path, record.encode()),
            Set(paths.groups(ctx.store.cluster), groups_v.value.put(replace(group, state="failing_over")).encode(),
                groups_v.version),
            *fence.zk_checks(),
        ])
    except Exception as exc:
        raise SwitchoverError(f"cannot start: {exc} (is a failover of {group_id!r} in progress?)") from None
    log.info("switchover_started", group=group_id, old_master=old, target=target)
    promoted = False
    try:
        async with ctx.node(old) as master:
            await master.pause_writes(int(pause * 1000))
            try:
                await _wait_caught_up(ctx, old, target, timeout=pause * 0.8)
                fence.check()
                await ctx.zk(ctx.store.commit, [Set(path, record.at_step("promote").encode(), 0), *fence.zk_checks()])
                async with ctx.node(target) as node:
                    await node.promote()
                promoted = True
                await _commit(ctx, fence, group_id, target, old, record_version=1)
                await _repoint(ctx, fence, group_id, target, [old, *(r for r in group.replicas if r != target)])
            finally:
                try:
                    await master.unpause()
                except NodeError as exc:
                    log.warning("switchover_unpause_failed", node=old, error=str(exc))
    except (NodeError, SwitchoverError) as exc:
        if promoted:
            raise SwitchoverError(f"switchover of {group_id!r} promoted {target} but then failed: {exc}; "
                                  "the sentinel leader will finish it") from None
        await _undo(ctx, fence, group_id)
        raise SwitchoverError(f"switchover of {group_id!r} failed and was undone: {exc}") from None
    log.info("switchover_done", group=group_id, master=target, old_master=old)
    return target


async def _commit(ctx: Context, fence: Fence, group_id: str, target: str, old: str, record_version: int) -> None:
    groups_v = await ctx.zk(ctx.store.read_groups)
    current = groups_v.value.get(group_id)
    if current is None:
        raise SwitchoverError(f"group {group_id!r} vanished meanwhile")
    replicas = (*(n for n in current.nodes if n not in (target, old)), old)
    changed = Group(group_id, target, replicas, "ok", current.tls)
    fence.check()
    await ctx.zk(ctx.store.commit, [
        Set(paths.groups(ctx.store.cluster), groups_v.value.put(changed).encode(), groups_v.version),
        Delete(paths.failover(ctx.store.cluster, group_id), record_version),
        *fence.zk_checks(),
    ])


async def _repoint(ctx: Context, fence: Fence, group_id: str, master: str, nodes: list[str]) -> None:
    for addr in nodes:
        fence.check()
        async with ctx.node(addr) as node:
            try:
                await node.follow(master)
            except NodeError as exc:
                # The sentinel's reconciler retries replicas that follow the wrong node.
                log.warning("replica_repoint_failed", group=group_id, node=addr, master=master, error=str(exc))


async def _undo(ctx: Context, fence: Fence, group_id: str) -> None:
    groups_v = await ctx.zk(ctx.store.read_groups)
    group = groups_v.value.get(group_id)
    ops: list[Any] = [Delete(paths.failover(ctx.store.cluster, group_id))]
    if group is not None and group.state == "failing_over":
        ops.append(Set(paths.groups(ctx.store.cluster), groups_v.value.put(replace(group, state="ok")).encode(),
                       groups_v.version))
    fence.check()
    await ctx.zk(ctx.store.commit, [*ops, *fence.zk_checks()])


async def recover_stale(ctx: Context, fence: Fence, current: Versioned[FailoverRecord]) -> None:
    """Sentinel leader: finish (if the target may be promoted) or undo an abandoned switchover."""
    record = current.value
    if record.age < STALE_AFTER:
        return
    group_id, target, old = record.group, record.candidate, record.old_master
    if record.step == "promote":
        fence.check()
        async with ctx.node(target) as node:
            await node.promote()
        await _commit(ctx, fence, group_id, target, old, record_version=current.version)
        groups_v = await ctx.zk(ctx.store.read_groups)
        group = groups_v.value.get(group_id)
        await _repoint(ctx, fence, group_id, target, list(group.replicas) if group else [old])
        log.warning("switchover_finished_by_sentinel", group=group_id, master=target, age=round(record.age, 1))
    else:
        await _undo(ctx, fence, group_id)
        log.warning("switchover_undone_by_sentinel", group=group_id, age=round(record.age, 1))
