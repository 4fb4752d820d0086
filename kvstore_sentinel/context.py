"""What every failover step needs: the store, the fence, blocking ZooKeeper calls off the loop, node clients."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from kvstore_cluster.store import Check, ClusterStore
from kvstore_sentinel.nodes import Node

log = structlog.get_logger("kvstore.sentinel")

# Test hook: a leader that has just recorded this step in failover/<group> hangs there (it never
# takes the step), so a test can kill it mid-failover and watch the next leader resume.
HANG_AT_STEP_ENV = "KVSTORE_SENTINEL_TEST_HANG_AT_STEP"


class NoFence:
    """The fence of a caller that is not a sentinel leader (the admin CLI): always allowed."""

    acting = True

    def check(self) -> None:
        return None

    def zk_checks(self) -> list[Check]:
        return []


@dataclass
class Context:
    store: ClusterStore
    fence: Any = field(default_factory=NoFence)  # election.Fence or NoFence
    node_timeout: float = 2.0
    password: str | None = None
    sentinel_id: str = "admin"
    zk_timeout: float = 10.0

    async def zk(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking kazoo / ClusterStore call off the loop, bounded by ``zk_timeout``."""
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(None, lambda: fn(*args, **kwargs)), self.zk_timeout)

    def node(self, address: str) -> Node:
        return Node(address, self.node_timeout, self.password)

    async def hook(self, step: str, **fields: Any) -> None:
        if os.environ.get(HANG_AT_STEP_ENV) == step:
            log.warning("test_hook_hang", step=step, **fields)
            await asyncio.Event().wait()


def encode_record(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True).encode()
