"""The leader's decisions each round: resume recorded failovers, then repair each group by mode."""

from __future__ import annotations

import time
from dataclasses import replace

import structlog

from kvstore_cluster import paths
from kvstore_cluster.model import Group
from kvstore_cluster.ops.cache import rejoin, remove_group
from kvstore_cluster.ops.context import Context
from kvstore_cluster.ops.errors import RejoinError
from kvstore_cluster.ops.failover import resume_failover, start_failover
from kvstore_cluster.ops.fence import Fence
from kvstore_cluster.ops.switchover import recover_stale
from kvstore_cluster.store import CorruptData, Set
from kvstore_sentinel.background_rebalance import BackgroundRebalance
from kvstore_sentinel.probe import Prober
from kvstore_sentinel.reconcile import ConfigKeeper, Reconciler

log = structlog.get_logger("kvstore.sentinel.leader")


class Leader:
    """Acts on objectively-down nodes; every side effect goes through ``fence``."""

    def __init__(self, ctx: Context, fence: Fence, prober: Prober, mode: str, auto_rejoin: bool, stable_for: float,
                 rebalance: BackgroundRebalance | None = None):
        self.ctx = ctx
        self.fence = fence
        self.rebalance = rebalance
        self.prober = prober
        self.mode = mode
        self.auto_rejoin = auto_rejoin
        self.stable_for = stable_for  # a down group's node must answer this long before it rejoins
        self.reconciler = Reconciler(ctx, fence, prober)
        self.config = ConfigKeeper(ctx, fence, prober)
        self._said: set[tuple[str, ...]] = set()  # (event, key) logged once until the condition clears

    def _once(self, event: str, key: str, level: str = "warning", **fields: object) -> None:
        if (event, key) not in self._said:
            self._said.add((event, key))
            getattr(log, level)(event, **fields)

    def _clear(self, event: str, key: str) -> None:
        self._said.discard((event, key))

    def _up(self, address: str, role: str = "master") -> bool:
        health = self.prober.nodes.get(address)
        if health is None or health.last is None or not health.last.ok or health.last.role != role:
            return False
        return health.up_for(time.monotonic()) >= self.stable_for

    async def tick(self, down: set[str]) -> None:
        records = await self.ctx.zk(self.ctx.store.failing_over)
        for group_id in records:
            try:
                found = await self.ctx.zk(self.ctx.store.read_failover, group_id)
            except CorruptData as exc:
                # Left alone (and its group with it): guessing what a garbled record meant could
                # promote the wrong node. The admin sees it in 'kvstore-admin status'.
                self._once("failover_record_unreadable", group_id, "error", group=group_id, error=str(exc))
                continue
            self._clear("failover_record_unreadable", group_id)
            if found is None:
                continue
            if found.value.kind == "switchover":
                await recover_stale(self.ctx, self.fence, found)  # the admin's, unless abandoned
            else:
                await resume_failover(self.ctx, self.fence, found)
        groups_v = await self.ctx.zk(self.ctx.store.read_groups)
        for group in groups_v.value:
            if group.id in records:
                continue
            if self.mode == "datastore":
                await self._datastore(group, down)
            else:
                await self._cache(group, down)
        await self.config.tick(groups_v.value)

    async def _datastore(self, group: Group, down: set[str]) -> None:
        if group.master in down:
            if group.state == "down":
                # Marked down because no replica was healthy. A replica that shows up later may have
                # restarted empty: promoting it would serve an empty dataset, so the group waits for
                # its master (or the admin) instead.
                return
            await start_failover(self.ctx, self.fence, group.id, down)
            return
        if group.state == "down":
            replicas_up = [r for r in group.replicas if r not in down and self._up(r, "replica")]
            if not self._up(group.master):
                return
            groups_v = await self.ctx.zk(self.ctx.store.read_groups)
            current = groups_v.value.get(group.id)
            if current is None or current.state != "down":
                return
            self.fence.check()
            await self.ctx.zk(self.ctx.store.commit, [
                Set(paths.groups(self.ctx.store.cluster),
                    groups_v.value.put(replace(current, state="ok")).encode(), groups_v.version),
                *self.fence.zk_checks(),
            ])
            log.warning("group_recovered", group=group.id, master=group.master, replicas_up=replicas_up)
            return
        if group.state == "ok":
            await self.reconciler.group(group)

    async def _cache(self, group: Group, down: set[str]) -> None:
        if group.state == "ok" and group.master in down:
            if await remove_group(self.ctx, self.fence, group.id, down):
                return
            self._once("last_group_kept", group.id, "error", group=group.id, master=group.master,
                       reason="no other healthy group to take its slots; keeping it")
            return
        self._clear("last_group_kept", group.id)
        if group.state == "down":
            if group.master in down or not self._up(group.master):
                self._clear("group_awaiting_rejoin", group.id)
                return
            if not self.auto_rejoin:
                self._once("group_awaiting_rejoin", group.id, group=group.id, master=group.master,
                           hint=f"node is back; run 'kvstore-admin group rejoin {group.id}' to flush and rejoin it")
                return
            try:
                await rejoin(self.ctx, self.fence, group.id)
            except RejoinError as exc:
                self._once("rejoin_failed", group.id, "error", group=group.id, error=str(exc))
                return
            if self.rebalance is not None:
                self.fence.check()
                self.rebalance.start(f"group {group.id} rejoined")
            return
        if group.state == "ok":
            await self.reconciler.group(group)
