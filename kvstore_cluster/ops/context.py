"""What every asynchronous operation step needs: the store, blocking ZooKeeper calls off the loop, node clients."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from kvstore_cluster.node import NODE_TIMEOUT, Node
from kvstore_cluster.store import ClusterStore

log = structlog.get_logger("kvstore.ops")

# Test hook: an operation that has just recorded this step in failover/<group> hangs there (it
# never takes the step), so a test can kill its process mid-failover and watch another resume.
HANG_AT_STEP_ENV = "KVSTORE_SENTINEL_TEST_HANG_AT_STEP"

# Test hook: the reshard executor exits (code 86, no cleanup, as if killed) right after the named
# step, so tests can resume a half-done reshard. Values: marked, acked, migrated (after the first
# take), piece (after the first piece of a big key), moved, committed.
CRASH_HOOK_ENV = "KVSTORE_TEST_CRASH_AFTER"
CRASH_HOOK_EXIT = 86


def crash_point(step: str) -> None:
    if os.environ.get(CRASH_HOOK_ENV) == step:
        log.warning("test_crash_hook", step=step)
        os._exit(CRASH_HOOK_EXIT)


@dataclass
class Context:
    store: ClusterStore
    node_timeout: float = NODE_TIMEOUT
    password: str | None = None
    actor: str = "admin"  # who acts, as recorded in failover records: a sentinel id or "admin"
    zk_timeout: float = 10.0
    # Told of each repair's outcome (``report``): the sentinel counts them for its metrics.
    observers: list[Callable[[str, dict[str, Any]], None]] = field(default_factory=list)

    async def zk(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking kazoo / ClusterStore call off the loop, bounded by ``zk_timeout``."""
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(None, lambda: fn(*args, **kwargs)), self.zk_timeout)

    def node(self, address: str) -> Node:
        return Node(address, self.node_timeout, self.password)

    def report(self, event: str, **fields: Any) -> None:
        """An operation ended (``failover`` with ``group``, ``result``, ``seconds``...); never fails it."""
        for observer in self.observers:
            try:
                observer(event, fields)
            except Exception as exc:  # noqa: BLE001 - bookkeeping must not break a repair
                log.warning("observer_failed", event=event, error=f"{type(exc).__name__}: {exc}")

    async def hook(self, step: str, **fields: Any) -> None:
        if os.environ.get(HANG_AT_STEP_ENV) == step:
            log.warning("test_hook_hang", step=step, **fields)
            await asyncio.Event().wait()
