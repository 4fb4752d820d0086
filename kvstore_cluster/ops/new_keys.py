"""Every key created on a Redis node since a moment: the ``new`` keyspace event (``notify-keyspace-events En``).

The key mover reads each source once for a whole reshard: keys present then come from that one
SCAN pass, keys created afterwards (in slots that move later) from this tracker. Redis publishes
``__keyevent@0__:new`` naming a key whenever one is added to database 0 (a SET or a push that
creates it, RENAME, COPY, RESTORE...) and says nothing when an existing key is written, so
clients updating their keys cost neither the source nor the mover anything. A key the pass saw
that is deleted afterwards costs a take that finds nothing; a flush needs nothing either.

Pub/sub is at most once: a dropped connection (or one the node cut for its output buffer) loses
what it would have said, and a node whose ``notify-keyspace-events`` lost the flags stopped
saying it. Either makes the tracker ``lost`` (checked at every ``fence()``), and the mover then
reads the node again instead of trusting it.

The flags ``E`` and ``n`` are added to the node's ``notify-keyspace-events`` while a tracker runs;
the ones added are recorded on the node (:data:`ADDED_FLAGS` in ``LOCK_DB``), so whichever tracker
closes next on that node takes them away again, even after a mover died with them set.

``fence()`` is a PING on the subscribed connection: Redis publishes a key's event while it runs
the command that created it, before it answers anything sent after that command, so once the
PONG is back every key created before the PING has been reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import hiredis
import structlog

from kvstore_cluster import tls
from kvstore_cluster.codec import parse_address
from kvstore_cluster.keymove import LOCK_DB
from kvstore_cluster.node import Node, NodeError, _pack

log = structlog.get_logger("kvstore.ops.new_keys")

CHANNEL = b"__keyevent@0__:new"
FLAGS = "En"  # keyevent channels, and the "new key" event (not part of "A")
ADDED_FLAGS = "kvstore:keyevent-flags"  # on the node, in LOCK_DB: the flags trackers added
_READ_SIZE = 1 << 16

# KEYS[1]: ADDED_FLAGS. ARGV[1]: flags to record as added ("" reads the record only).
_RECORD = f"""
redis.call('SELECT', {LOCK_DB})
local had = redis.call('GET', KEYS[1]) or ''
if ARGV[1] ~= '' then redis.call('SET', KEYS[1], had .. ARGV[1]) end
return had
"""
# KEYS[1]: ADDED_FLAGS. Forget the record (the flags were taken away).
_FORGET = f"""
redis.call('SELECT', {LOCK_DB})
return redis.call('DEL', KEYS[1])
"""


def missing_flags(current: str) -> str:
    """The tracker's flags ``notify-keyspace-events`` (as CONFIG GET shows it) lacks."""
    return "".join(f for f in FLAGS if f not in current)


def without_flags(current: str, added: str) -> str:
    """``current`` less the flags a tracker ``added`` (never one it did not add)."""
    return "".join(c for c in current if c not in added or c not in FLAGS)


async def _flags(node: Node) -> str:
    reply = await node.call("CONFIG", "GET", "notify-keyspace-events")
    try:
        return bytes(reply[1]).decode()
    except (TypeError, IndexError, UnicodeDecodeError):
        raise NodeError(f"node {node.address} does not answer CONFIG GET notify-keyspace-events usably "
                        f"({str(reply)[:60]!r})") from None


async def take_flags_away(node: Node) -> None:
    """Remove the flags trackers added to the node's ``notify-keyspace-events`` (and their record)."""
    added = bytes(await node.call("EVAL", _RECORD, 1, ADDED_FLAGS, "") or b"").decode(errors="replace")
    if not added:
        return
    current = await _flags(node)
    kept = without_flags(current, added)
    if kept != current:
        await node.call("CONFIG", "SET", "notify-keyspace-events", kept)
    await node.call("EVAL", _FORGET, 1, ADDED_FLAGS)


class NewKeyTracker:
    """Calls ``on_keys(keys)`` for the keys created on ``address`` from ``start()`` on."""

    def __init__(self, address: str, on_keys: Callable[[list[bytes]], None], password: str | None = None,
                 timeout: float = 5.0):
        self.address = address
        self.on_keys = on_keys
        self.password = password
        self.timeout = timeout
        self.lost: str | None = None  # why the tracker can no longer be trusted
        self._control = Node(address, timeout, password)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiters: list[asyncio.Future[object]] = []

    async def start(self) -> None:
        current = await _flags(self._control)
        missing = missing_flags(current)
        if missing:
            await self._control.call("EVAL", _RECORD, 1, ADDED_FLAGS, missing)
            await self._control.call("CONFIG", "SET", "notify-keyspace-events", current + missing)
        host, port = parse_address(self.address)
        try:
            reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=tls.for_address(self.address)), self.timeout)
        except (OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise NodeError(f"node {self.address} does not answer (tracking new keys: {reason})") from None
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
        if self.password:
            await self._call(["AUTH", self.password], "AUTH")
        await self._call(["SUBSCRIBE", CHANNEL], "SUBSCRIBE")

    async def fence(self) -> None:
        """Return once every key the node created before now has been passed to ``on_keys``."""
        try:
            flags = await _flags(self._control)
        except NodeError as exc:
            self._lose(f"notify-keyspace-events could not be checked ({exc})")
            raise
        if missing_flags(flags):
            self._lose("notify-keyspace-events no longer has the flags E and n (changed by someone else)")
        await self._call(["PING"], "PING")

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
            self._reader_task = None
        try:
            await take_flags_away(self._control)
        except NodeError as exc:
            log.warning("keyevent_flags_left", node=self.address, error=str(exc),
                        consequence="the next reshard's tracker on this node removes them")
        await self._control.close()

    async def _call(self, args: list[object], what: str) -> object:
        if self.lost is not None or self._writer is None:
            raise NodeError(f"node {self.address}: tracking new keys stopped ({self.lost})")
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._writer.write(_pack(args))
        try:
            reply = await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            self._lose(f"no answer to {what} within {self.timeout:g}s")
            raise NodeError(f"node {self.address} does not answer {what} (tracking new keys)") from None
        if isinstance(reply, hiredis.ReplyError):
            self._lose(f"{what} refused: {reply}")
            raise NodeError(f"node {self.address} refused {what} ({reply})")
        return reply

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            log.warning("new_key_tracking_lost", node=self.address, reason=why)
        for w in self._waiters:
            if not w.done():
                w.set_exception(NodeError(f"node {self.address}: tracking new keys stopped ({why})"))
        self._waiters.clear()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        parser = hiredis.Reader()
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    self._lose("connection closed by the node")
                    return
                parser.feed(data)
                keys: list[bytes] = []
                while (item := parser.gets()) is not False:
                    if isinstance(item, list) and len(item) == 3 and item[0] == b"message":
                        keys.append(item[2])
                    elif self._waiters:  # +OK (AUTH), [subscribe, channel, 1], [pong, ""]
                        if keys:  # the keys before a PONG are reported before the fence returns
                            self.on_keys(keys)
                            keys = []
                        w = self._waiters.pop(0)
                        if not w.done():
                            w.set_result(item)
                if keys:
                    self.on_keys(keys)
        except (OSError, hiredis.ProtocolError) as exc:
            self._lose(f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            pass
