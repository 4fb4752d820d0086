"""Bring nodes back in line: replicas follow their master, every node has the cluster-wide parameters."""

from __future__ import annotations

import time

import structlog

from kvstore_cluster import node_config
from kvstore_cluster.model import Group, Groups
from kvstore_cluster.node import NodeError
from kvstore_cluster.ops.context import Context
from kvstore_cluster.ops.fence import Fence
from kvstore_cluster.store import CorruptData
from kvstore_sentinel.probe import Prober

log = structlog.get_logger("kvstore.sentinel.reconcile")

RETRY_AFTER = 5.0  # seconds between attempts on a node that refused


class Reconciler:
    """Sends REPLICAOF to listed replicas that are masters or follow the wrong node; backs off on refusal."""

    def __init__(self, ctx: Context, fence: Fence, prober: Prober):
        self.ctx = ctx
        self.fence = fence
        self.prober = prober
        self._retry_at: dict[str, float] = {}

    def wrong_master(self, group: Group, address: str) -> bool:
        """True if ``address`` answers probes but does not follow ``group.master``."""
        result = self.prober.result(address)
        if result is None or not result.ok:
            return False
        return result.role == "master" or result.master != group.master

    async def group(self, group: Group) -> None:
        now = time.monotonic()
        for addr in group.replicas:
            if not self.wrong_master(group, addr) or self._retry_at.get(addr, 0.0) > now:
                continue
            result = self.prober.result(addr)
            self.fence.check()
            async with self.ctx.node(addr) as node:
                try:
                    await node.follow(group.master)
                except NodeError as exc:
                    self._retry_at[addr] = now + RETRY_AFTER
                    log.error("replica_repoint_failed", group=group.id, node=addr, master=group.master,
                              error=str(exc), retry_in=RETRY_AFTER)
                    continue
            self._retry_at.pop(addr, None)
            # A node that calls itself master here is usually an old master coming back: REPLICAOF
            # makes it resync from the group's master, dropping whatever it wrote on its own.
            log.warning("replica_repointed", group=group.id, node=addr, master=group.master,
                        was_role=result.role if result else None, was_following=result.master if result else None)


class ConfigKeeper:
    """Sets the parameters kept in the ``config`` znode (CONFIG SET through a proxy) on every node that answers.

    A node added without ``kvstore-admin group add``, or restarted from a config file older than
    the last CONFIG SET, would otherwise run with other settings than its group's peers. Checked
    every ``CHECK_EVERY`` seconds (one CONFIG GET per node) and at once when the record changes.
    """

    CHECK_EVERY = 10.0

    def __init__(self, ctx: Context, fence: Fence, prober: Prober):
        self.ctx = ctx
        self.fence = fence
        self.prober = prober
        self._version: int | None = None
        self._at = 0.0

    async def tick(self, groups: Groups) -> None:
        try:
            record = await self.ctx.zk(self.ctx.store.read_node_config)
        except CorruptData as exc:
            log.error("config_record_unreadable", error=str(exc))
            return
        now = time.monotonic()
        if record.version == self._version and now - self._at < self.CHECK_EVERY:
            return
        self._version, self._at = record.version, now
        if not record.value.params:
            return
        for group in groups:
            for address in (group.master, *group.replicas):
                result = self.prober.result(address)
                if result is None or not result.ok:
                    continue
                self.fence.check()
                try:
                    async with self.ctx.node(address) as node:
                        done = await node_config.apply(node, record.value)
                except NodeError as exc:
                    log.error("node_config_failed", group=group.id, node=address, error=str(exc))
                    continue
                if done:
                    log.warning("node_configured", group=group.id, node=address, params=done)
