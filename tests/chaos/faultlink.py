"""A TCP relay that makes one link slow: added latency, jitter, and stalls (bytes held, then delivered in order).

Like asyncpg's ``TCPFuzzingProxy``, it runs its own asyncio loop on a thread. A stall holds bytes
in both directions without closing anything, as a congested network does; when it ends, the held
bytes are delivered in order. When one side closes, what the other side had already sent is still
delivered before the close is passed on: a request the proxy gave up on (its backend timeout) may
still reach Redis and run, which is exactly what makes such an outcome *unknown*.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any


class FaultLink:
    """``127.0.0.1:<port>`` relays to ``target``; ``slow()`` / ``stall()`` / ``heal()`` from any thread."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.latency = 0.0
        self.jitter = 0.0
        self._flowing: asyncio.Event | None = None
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._rng = random.Random(7)
        self.connections = 0
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fault-link", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault link did not start")
        assert self._server is not None
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # --- control (any thread) -----------------------------------------------------------------

    def slow(self, latency: float, jitter: float = 0.0) -> None:
        """Every chunk is delivered ``latency`` (+ up to ``jitter``) seconds after it arrived."""
        self._call(self._set, latency, jitter, True)

    def stall(self) -> None:
        """Hold every byte in both directions until ``heal()`` or ``slow()``."""
        self._call(self._set, self.latency, self.jitter, False)

    def heal(self) -> None:
        self._call(self._set, 0.0, 0.0, True)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _call(self, fn: Any, *args: Any) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                fn(*args)
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)

    # --- the loop thread ----------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _set(self, latency: float, jitter: float, flowing: bool) -> None:
        self.latency, self.jitter = latency, jitter
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.transport.abort()  # like the node itself refusing: nothing was relayed
            return
        self.connections += 1
        self._writers |= {c_writer, s_writer}
        try:
            await asyncio.gather(self._pipe(c_reader, s_writer), self._pipe(s_reader, c_writer))
        finally:
            self._writers -= {c_writer, s_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction through a queue of (deliver_at, bytes), in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            assert self._flowing is not None
            while True:
                at, data = await queue.get()
                if not data:
                    break
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._flowing.wait()
                writer.write(data)
                try:
                    await writer.drain()
                except OSError:
                    return
            try:
                writer.write_eof()
            except OSError:
                writer.transport.abort()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                try:
                    data = await reader.read(65536)
                except OSError:
                    data = b""
                extra = self.latency + (self._rng.random() * self.jitter if self.jitter else 0.0)
                await queue.put((time.monotonic() + extra, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
            if writer.transport.get_write_buffer_size() == 0:
                writer.close()
