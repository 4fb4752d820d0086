"""Control commands on one Redis node (REPLICAOF, FLUSHALL, CLIENT PAUSE, offsets) with timeouts.

REPLICAOF is always followed by CONFIG REWRITE (``kvstore_cluster.replication``), so a node
restarted from its config file keeps the role the failover gave it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from kvstore_cluster.model import parse_address
from kvstore_cluster.replication import CONFIG_REWRITE, replicaof_args, rewrite_error_matters
from kvstore_sentinel.probe import ProbeResult, parse_info, result_from_info

T = TypeVar("T")

log = structlog.get_logger("kvstore.sentinel.nodes")


class NodeError(Exception):
    """A control command failed on a node; the message names the node and the command."""


class Node:
    """One short-lived redis.asyncio client to ``address``; every call raises only ``NodeError``."""

    def __init__(self, address: str, timeout: float = 2.0, password: str | None = None):
        self.address = address
        host, port = parse_address(address)
        self.timeout = timeout
        self.client = aioredis.Redis(host=host, port=port, password=password, socket_timeout=timeout,
                                     socket_connect_timeout=timeout, single_connection_client=True,
                                     # No silent retries: a failover step must fail fast and be logged.
                                     retry=Retry(NoBackoff(), 0))

    async def __aenter__(self) -> Node:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
            pass

    async def _run(self, what: str, fn: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        try:
            return await asyncio.wait_for(fn(), timeout or self.timeout + 0.5)
        except TimeoutError:
            raise NodeError(f"{self.address}: {what} timed out") from None
        except redis.exceptions.ResponseError as exc:
            raise NodeError(f"{self.address}: {what} refused: {exc}") from None
        except (redis.exceptions.RedisError, OSError) as exc:
            raise NodeError(f"{self.address}: {what} failed: {type(exc).__name__}: {exc}") from None

    async def execute(self, *args: Any, timeout: float | None = None) -> Any:
        what = " ".join(str(a) for a in args[:3])
        return await self._run(what, lambda: self.client.execute_command(*args), timeout)

    async def replication(self) -> ProbeResult:
        """INFO replication as a ``ProbeResult`` (role, offset, master)."""
        raw = await self.execute("INFO", "replication")
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        info = parse_info(text) if isinstance(text, str) else {k: str(v) for k, v in dict(text).items()}
        try:
            return result_from_info(self.address, info, time.time())
        except Exception as exc:  # noqa: BLE001 - ProbeError, but keep NodeError the one type callers see
            raise NodeError(f"{self.address}: INFO replication unusable: {exc}") from None

    async def set_replication(self, master: str | None) -> None:
        """``REPLICAOF master`` (``None``: ``NO ONE``), then CONFIG REWRITE; only REPLICAOF failing raises."""
        await self.execute(*replicaof_args(master))
        try:
            await self.execute(*CONFIG_REWRITE)
        except NodeError as exc:
            if rewrite_error_matters(exc):
                # The role is in effect; only a restart from the config file would lose it.
                log.warning("config_rewrite_failed", node=self.address, error=str(exc))

    async def promote(self) -> None:
        await self.set_replication(None)

    async def follow(self, master: str) -> None:
        await self.set_replication(master)

    async def flushall(self) -> None:
        await self.execute("FLUSHALL", "SYNC", timeout=max(10.0, self.timeout))

    async def pause_writes(self, millis: int) -> None:
        await self.execute("CLIENT", "PAUSE", str(millis), "WRITE")

    async def unpause(self) -> None:
        await self.execute("CLIENT", "UNPAUSE")
