"""Bring nodes back in line with ``groups``: replicas (and returning old masters) follow their group's master."""

from __future__ import annotations

import time

import structlog

from kvstore_cluster.model import Group
from kvstore_cluster.node import NodeError
from kvstore_cluster.ops.context import Context
from kvstore_cluster.ops.fence import Fence
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
