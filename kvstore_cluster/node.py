"""The control-plane client of one Redis node, for the admin, the sentinel and the key mover.

Every call is bounded by a timeout and never retried (a failover step or a MIGRATE must fail
fast and be reported, not repeated behind the caller's back), and every failure is one
``NodeError`` whose message names the node, the command and, for a password problem, what to
do about it. After any failure but a refusal the connection is dropped; the next call opens a
fresh one, so a long-lived ``Node`` (the sentinel's probes) heals by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from kvstore_cluster.codec import parse_address

log = structlog.get_logger("kvstore.node")

NODE_TIMEOUT = 1.0  # seconds for one command on a node that should answer at once
FLUSH_TIMEOUT = 10.0  # FLUSHALL SYNC of a big node takes a while
PASSWORD_HINT = "give the nodes' password with --redis-password or KVSTORE_REDIS_PASSWORD"
_NO_CONFIG_FILE = "running without a config file"


class NodeError(Exception):
    """A command failed on a node; the message names the node and the command."""


class CommandRefused(NodeError):
    """The node answered the command with an error reply (``reply``), e.g. BUSYKEY or an unknown command."""

    def __init__(self, message: str, reply: str):
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class ReplicationInfo:
    """What ``INFO replication`` says about a node."""

    role: str  # "master" or "replica"
    offset: int  # master_repl_offset of a master, slave_repl_offset of a replica
    master: str | None = None  # HOST:PORT a replica follows
    link_up: bool | None = None  # a replica's master_link_status (None for a master)
    connected_replicas: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def replication_info(fields: Mapping[str, Any]) -> ReplicationInfo:
    """``INFO replication`` fields (text or as redis-py parsed them) -> ``ReplicationInfo``; ValueError if unusable."""
    role = str(fields.get("role", ""))
    if role == "master":
        return ReplicationInfo("master", int(str(fields.get("master_repl_offset", 0))),
                               connected_replicas=int(str(fields.get("connected_slaves", 0))))
    if role == "slave":
        host, port = fields.get("master_host"), fields.get("master_port")
        return ReplicationInfo("replica", int(str(fields.get("slave_repl_offset", 0))),
                               master=f"{host}:{int(str(port))}" if host and port else None,
                               link_up=fields.get("master_link_status") == "up")
    raise ValueError(f"INFO replication has no usable role ({role or None!r})")


def replicaof_args(master: str | None) -> tuple[str, str, str]:
    """``REPLICAOF host port`` to follow ``master`` (``HOST:PORT``), ``REPLICAOF NO ONE`` for ``None``."""
    if master is None:
        return ("REPLICAOF", "NO", "ONE")
    host, port = parse_address(master)
    return ("REPLICAOF", host, str(port))


class Node:
    """One connection to ``address``, opened on first use; ``async with`` closes it."""

    def __init__(self, address: str, timeout: float = NODE_TIMEOUT, password: str | None = None):
        self.address = address
        self.host, self.port = parse_address(address)
        self.timeout = timeout
        self.password = password or None
        self._client: aioredis.Redis | None = None

    async def __aenter__(self) -> Node:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
                pass

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            # No socket timeout: each call is bounded by its own (asyncio.wait_for), so a slow
            # command (FLUSHALL, MIGRATE) can be given longer than a PING.
            self._client = aioredis.Redis(host=self.host, port=self.port, password=self.password,
                                          socket_timeout=None, socket_connect_timeout=self.timeout,
                                          single_connection_client=True, retry=Retry(NoBackoff(), 0))
        return self._client

    def failure(self, what: str, exc: BaseException, timeout: float) -> str:
        """The user-facing reason ``what`` failed with ``exc``."""
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, redis.exceptions.AuthenticationError):
            if self.password is None:
                return f"node {self.address} requires a password ({PASSWORD_HINT})"
            if "without any password configured" in reason or "no password is set" in reason:
                return (f"node {self.address} has no password, but one was given (--redis-password or "
                        "KVSTORE_REDIS_PASSWORD); every node of the cluster must have the same one")
            return f"node {self.address} refused the password ({reason})"
        if isinstance(exc, redis.exceptions.ResponseError):
            return f"node {self.address} refused {what} ({reason})"
        if isinstance(exc, TimeoutError | redis.exceptions.TimeoutError):
            reason = f"no answer within {timeout:g}s"
        elif isinstance(exc, redis.exceptions.InvalidResponse):
            reason = f"not a Redis reply: {reason}"
        return f"node {self.address} does not answer {what} ({reason})"

    async def call(self, *args: Any, timeout: float | None = None, what: str | None = None) -> Any:
        """Run one command; any failure raises ``NodeError`` (``CommandRefused`` for an error reply)."""
        what = what or " ".join(str(a) for a in args[:3] if isinstance(a, str | int))
        limit = timeout or self.timeout
        try:
            return await asyncio.wait_for(self._redis().execute_command(*args), limit)
        except redis.exceptions.ResponseError as exc:
            raise CommandRefused(self.failure(what, exc, limit), str(exc)) from None
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            await self.close()
            raise NodeError(self.failure(what, exc, limit)) from None

    # --- health and replication -----------------------------------------------------------------

    async def ping(self) -> None:
        reply = await self.call("PING")
        if reply not in (True, b"PONG", "PONG"):
            await self.close()
            raise NodeError(f"node {self.address} does not answer PING (it answered {str(reply)[:60]!r})")

    async def replication(self) -> ReplicationInfo:
        """``INFO replication`` of the node."""
        fields = await self.call("INFO", "replication")
        try:
            if not isinstance(fields, dict):
                raise ValueError("not INFO text")
            return replication_info(fields)
        except ValueError as exc:
            await self.close()
            raise NodeError(f"node {self.address} does not answer INFO replication usably ({exc})") from None

    async def set_replication(self, master: str | None) -> None:
        """``REPLICAOF master`` (``None``: ``NO ONE``), then ``CONFIG REWRITE``; only REPLICAOF failing raises.

        The rewrite makes a node restarted from its config file come back with the role it was
        given, not the one in its file (a promoted replica would otherwise rejoin its old master,
        wiping what it took as master). A node started without a config file has nothing to keep.
        """
        await self.call(*replicaof_args(master))
        try:
            await self.call("CONFIG", "REWRITE")
        except NodeError as exc:
            if _NO_CONFIG_FILE not in str(exc):
                log.warning("config_rewrite_failed", node=self.address, error=str(exc),
                            consequence="a restart of the node brings back the replication in its config file")

    async def promote(self) -> None:
        await self.set_replication(None)

    async def follow(self, master: str) -> None:
        await self.set_replication(master)

    async def replicate(self, master: str, timeout: float) -> None:
        """Follow ``master`` and wait until the link is up (REPLICAOF answers at once and syncs in the background)."""
        await self.follow(master)
        host, port = parse_address(master)
        deadline = time.monotonic() + timeout
        last: ReplicationInfo | str = "no answer yet"
        while True:
            try:
                last = await self.replication()
                if last.role == "replica" and last.master == f"{host}:{port}" and last.link_up:
                    return
            except NodeError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                state = last if isinstance(last, str) else \
                    f"role {last.role}, link {'up' if last.link_up else 'down'}"
                raise NodeError(f"replica {self.address} did not reach master_link_status:up with {master} "
                                f"within {timeout:g}s ({state})")
            await asyncio.sleep(0.05)

    async def flushall(self) -> None:
        await self.call("FLUSHALL", "SYNC", timeout=max(FLUSH_TIMEOUT, self.timeout))

    async def pause_writes(self, millis: int) -> None:
        await self.call("CLIENT", "PAUSE", str(millis), "WRITE")

    async def unpause(self) -> None:
        await self.call("CLIENT", "UNPAUSE")

    # --- keys (the key mover, check) ----------------------------------------------------------------

    async def scan(self, count: int) -> AsyncIterator[list[bytes]]:
        """Every key of the node, one SCAN reply at a time."""
        cursor = b"0"
        while True:
            reply = await self.call("SCAN", cursor, "COUNT", count, what="SCAN")
            cursor, keys = reply[0], reply[1]
            if keys:
                yield keys
            if int(cursor) == 0:
                return

    async def exist(self, keys: list[bytes]) -> list[bool]:
        """Whether each of ``keys`` exists (one pipelined EXISTS each)."""
        async def run() -> list[Any]:
            async with self._redis().pipeline(transaction=False) as pipe:
                for k in keys:
                    pipe.exists(k)
                return list(await pipe.execute())

        try:
            return [bool(n) for n in await asyncio.wait_for(run(), self.timeout)]
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            await self.close()
            raise NodeError(self.failure("EXISTS", exc, self.timeout)) from None

    async def migrate(self, target: str, keys: list[bytes], timeout_ms: int, password: str | None = None) -> None:
        """``MIGRATE`` ``keys`` to ``target`` (never REPLACE); NOKEY (already gone) is success."""
        host, port = parse_address(target)
        auth: list[Any] = ["AUTH", password] if password else []
        await self.call("MIGRATE", host, port, "", 0, timeout_ms, *auth, "KEYS", *keys,
                        timeout=timeout_ms / 1000 + self.timeout, what=f"MIGRATE to {target}")

    async def unlink(self, keys: list[bytes]) -> int:
        return int(await self.call("UNLINK", *keys, what="UNLINK"))
