"""Every key written on a Redis node since a moment, by slot: ``CLIENT TRACKING ON BCAST`` over RESP3.

The key mover reads each source once for a whole reshard: keys present then come from that
one SCAN pass, keys written afterwards (in slots that move later) from this tracker. Redis sends
an invalidation naming every key any client modified (or that expired, or was evicted); a flush
is an invalidation of everything, and a dropped connection loses what it would have said: both
make the tracker ``lost``, and the mover reads the node again instead of trusting it.

``fence()`` is a PING on the same connection: Redis queues the invalidations of a write before
it answers anything after that write, so once the PONG is back every write the node executed
before the PING has been reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import hiredis
import structlog

from kvstore_cluster import tls
from kvstore_cluster.codec import parse_address
from kvstore_cluster.node import NodeError, _pack

log = structlog.get_logger("kvstore.ops.tracker")

_READ_SIZE = 1 << 16


class WriteTracker:
    """Calls ``on_keys(keys)`` for the keys written on ``address`` from ``start()`` on."""

    def __init__(self, address: str, on_keys: Callable[[list[bytes]], None], password: str | None = None,
                 timeout: float = 5.0):
        self.address = address
        self.on_keys = on_keys
        self.password = password
        self.timeout = timeout
        self.lost: str | None = None  # why the tracker can no longer be trusted
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiters: list[asyncio.Future[object]] = []

    async def start(self) -> None:
        host, port = parse_address(self.address)
        try:
            reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=tls.for_address(self.address)), self.timeout)
        except (OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise NodeError(f"node {self.address} does not answer (tracking writes: {reason})") from None
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
        hello: list[object] = ["HELLO", 3] + (["AUTH", "default", self.password] if self.password else [])
        await self._call(hello, "HELLO 3")
        await self._call(["CLIENT", "TRACKING", "ON", "BCAST"], "CLIENT TRACKING")

    async def fence(self) -> None:
        """Return once every write the node executed before now has been passed to ``on_keys``."""
        await self._call(["PING"], "PING")

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
            self._reader_task = None

    async def _call(self, args: list[object], what: str) -> object:
        if self.lost is not None or self._writer is None:
            raise NodeError(f"node {self.address}: tracking writes stopped ({self.lost})")
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._writer.write(_pack(args))
        try:
            reply = await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            self._lose(f"no answer to {what} within {self.timeout:g}s")
            raise NodeError(f"node {self.address} does not answer {what} (tracking writes)") from None
        if isinstance(reply, hiredis.ReplyError):
            self._lose(f"{what} refused: {reply}")
            raise NodeError(f"node {self.address} refused {what} ({reply})")
        return reply

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            log.warning("write_tracking_lost", node=self.address, reason=why)
        for w in self._waiters:
            if not w.done():
                w.set_exception(NodeError(f"node {self.address}: tracking writes stopped ({why})"))
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
                while (item := parser.gets()) is not False:
                    if isinstance(item, list) and len(item) == 2 and item[0] == b"invalidate":
                        if item[1] is None:  # FLUSHALL / FLUSHDB: anything may have changed
                            self._lose("the node was flushed")
                        else:
                            self.on_keys(item[1])
                    elif self._waiters:
                        w = self._waiters.pop(0)
                        if not w.done():
                            w.set_result(item)
        except (OSError, hiredis.ProtocolError) as exc:
            self._lose(f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            pass
