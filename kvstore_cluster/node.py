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
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import hiredis
import structlog

from kvstore_cluster import tls
from kvstore_cluster.codec import parse_address

log = structlog.get_logger("kvstore.node")

NODE_TIMEOUT = 1.0  # seconds for one command on a node that should answer at once
FLUSH_TIMEOUT = 10.0  # FLUSHALL SYNC of a big node takes a while
PASSWORD_HINT = "give the nodes' password with --redis-password or KVSTORE_REDIS_PASSWORD"
_NO_CONFIG_FILE = "running without a config file"
_READ_SIZE = 65536


class NodeError(Exception):
    """A command failed on a node; the message names the node and the command."""


class CommandRefused(NodeError):
    """The node answered the command with an error reply (``reply``), e.g. BUSYKEY or an unknown command."""

    def __init__(self, message: str, reply: str):
        super().__init__(message)
        self.reply = reply


class _AuthRefused(Exception):
    """The node refused AUTH, or wants it (NOAUTH); the text is its reply."""


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


def parse_info(text: str) -> dict[str, str]:
    """``INFO`` text -> ``{field: value}``; section headers and blank lines are skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def replication_info(fields: Mapping[str, Any]) -> ReplicationInfo:
    """``INFO replication`` fields -> ``ReplicationInfo``; ``ValueError`` if they are not a usable role and offset."""
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


def _pack(args: Sequence[Any]) -> bytes:
    """One command in RESP (hiredis packs str, bytes, int and float arguments)."""
    return hiredis.pack_command(cast(Any, tuple(args)))


class Node:
    """One connection to ``address`` (RESP, parsed by hiredis), opened on first use; ``async with`` closes it."""

    def __init__(self, address: str, timeout: float = NODE_TIMEOUT, password: str | None = None):
        self.address = address
        self.host, self.port = parse_address(address)
        self.timeout = timeout
        self.password = password or None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader()
        # Bytes of requests written to the node, and of those whose replies all came back: the key
        # mover tells its own traffic from its clients' (ops/pace.py).
        self.sent = 0
        self.answered = 0

    async def __aenter__(self) -> Node:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
                pass

    async def _reply(self) -> Any:
        assert self._reader is not None
        while True:
            reply = self._parser.gets()
            if reply is not False:
                return reply
            data = await self._reader.read(_READ_SIZE)
            if not data:
                raise ConnectionError("connection closed by the node")
            self._parser.feed(data)

    async def _exchange(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` in one write, return their replies (error replies as ``hiredis.ReplyError``)."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port,
                                                                       ssl=tls.for_address(self.address))
            self._parser = hiredis.Reader()
            if self.password is not None:
                self._writer.write(_pack(("AUTH", self.password)))
                reply = await self._reply()
                if isinstance(reply, hiredis.ReplyError):
                    raise _AuthRefused(str(reply))
        assert self._writer is not None
        data = b"".join(_pack(c) for c in commands)
        self.sent += len(data)
        self._writer.write(data)
        await self._writer.drain()
        replies = [await self._reply() for _ in commands]
        self.answered += len(data)
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOAUTH"):
                raise _AuthRefused(str(reply))
        return replies

    def failure(self, what: str, exc: BaseException, timeout: float) -> str:
        """The user-facing reason ``what`` failed with ``exc``."""
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, _AuthRefused):
            if self.password is None:
                return f"node {self.address} requires a password ({PASSWORD_HINT})"
            if "without any password configured" in reason or "no password is set" in reason:
                return (f"node {self.address} has no password, but one was given (--redis-password or "
                        "KVSTORE_REDIS_PASSWORD); every node of the cluster must have the same one")
            return f"node {self.address} refused the password ({reason})"
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {timeout:g}s"
        elif isinstance(exc, hiredis.ProtocolError):
            reason = f"not a Redis reply: {reason}"
        elif isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        return f"node {self.address} does not answer {what} ({reason})"

    async def pipeline(self, commands: Sequence[Sequence[Any]], timeout: float | None = None,
                       what: str | None = None) -> list[Any]:
        """Run ``commands`` in one round trip; failures as ``call``'s (the first error reply refuses them all)."""
        what = what or " ".join(str(a) for a in commands[0][:3] if isinstance(a, str | int))
        limit = timeout or self.timeout
        try:
            replies = await asyncio.wait_for(self._exchange(commands), limit)
        except (OSError, TimeoutError, hiredis.ProtocolError, _AuthRefused) as exc:
            # The connection's state is unknown (a reply may still be on its way): start afresh.
            await self.close()
            raise NodeError(self.failure(what, exc, limit)) from None
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise CommandRefused(f"node {self.address} refused {what} ({reply})", str(reply))
        return replies

    async def call(self, *args: Any, timeout: float | None = None, what: str | None = None) -> Any:
        """Run one command; any failure raises ``NodeError`` (``CommandRefused`` for an error reply)."""
        return (await self.pipeline([args], timeout, what))[0]

    # --- health and replication -----------------------------------------------------------------

    async def ping(self) -> None:
        reply = await self.call("PING")
        if reply != b"PONG":
            await self.close()
            raise NodeError(f"node {self.address} does not answer PING (it answered {str(reply)[:60]!r})")

    async def replication(self) -> ReplicationInfo:
        """``INFO replication`` of the node."""
        text = await self.call("INFO", "replication")
        try:
            if not isinstance(text, bytes):
                raise ValueError("not INFO text")
            return replication_info(parse_info(text.decode("utf-8", "replace")))
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

    async def scan(self, count: int | Callable[[], int], match: bytes | None = None) -> AsyncIterator[list[bytes]]:
        """Every key of the node (matching the glob ``match``, if given), one SCAN reply at a time.

        ``count`` may be a function: asked before each call (the key mover's pace shortens them).
        """
        cursor = b"0"
        extra: tuple[Any, ...] = ("MATCH", match) if match is not None else ()
        while True:
            n = count() if callable(count) else count
            reply = await self.call("SCAN", cursor, "COUNT", n, *extra, what="SCAN")
            try:
                cursor, keys = reply
                done = int(cursor) == 0
            except (TypeError, ValueError):
                await self.close()
                raise NodeError(f"node {self.address} does not answer SCAN usably ({str(reply)[:60]!r})") from None
            if keys:
                yield keys
            if done:
                return

    async def exist(self, keys: list[bytes]) -> list[bool]:
        """Whether each of ``keys`` exists (one pipelined EXISTS each)."""
        return [bool(n) for n in await self.pipeline([("EXISTS", k) for k in keys], what="EXISTS")]

    async def migrate(self, target: str, keys: list[bytes], timeout_ms: int, password: str | None = None) -> None:
        """``MIGRATE`` ``keys`` to ``target`` (never REPLACE); NOKEY (already gone) is success."""
        host, port = parse_address(target)
        auth: list[Any] = ["AUTH", password] if password else []
        await self.call("MIGRATE", host, port, "", 0, timeout_ms, *auth, "KEYS", *keys,
                        timeout=timeout_ms / 1000 + self.timeout, what=f"MIGRATE to {target}")

    async def unlink(self, keys: list[bytes]) -> int:
        return int(await self.call("UNLINK", *keys, what="UNLINK"))
