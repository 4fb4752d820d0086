"""The channel between the workers of one proxy: a unix socket each, in a directory only they can open.

``--workers N`` forks N processes that share nothing but the listening port. What must still
answer for the whole proxy (INFO's counters, LATENCY, MONITOR) asks the siblings over this
channel; nothing on the request path touches it, and a proxy with one worker has none::

    parent (workers.py): mkdtemp(0700) ─► <dir>/0.sock  <dir>/1.sock ... (one per worker index)
    worker i ──connect──► <dir>/j.sock, one request line:
        stats\\n                 ◄── its counters as JSON, then EOF          (INFO)
        latency-reset [json]\\n  ◄── JSON: how many events it reset, EOF      (LATENCY RESET)
        monitor\\n               ◄── +OK\\r\\n, then its MONITOR lines until either side closes

A worker restarted by the parent binds its index's path again; a stale socket of a dead worker
refuses connections, which counts as a sibling that did not answer.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger("kvstore.proxy.siblings")

ASK_TIMEOUT = 1.0  # seconds a sibling has to answer a one-shot request
_MAX_REQUEST_LINE = 4096


@dataclass(frozen=True)
class Family:
    """What the workers of one proxy share: its identity as one server and where their sockets are."""

    run_id: str = field(default_factory=lambda: os.urandom(20).hex())
    started_at: float = field(default_factory=time.time)
    workers: int = 1
    index: int = 0
    directory: str | None = None  # None: one worker, no siblings

    def path(self, index: int) -> str:
        assert self.directory is not None
        return os.path.join(self.directory, f"{index}.sock")

    def siblings(self) -> list[int]:
        return [i for i in range(self.workers) if i != self.index] if self.directory else []


def make_directory() -> str:
    """A fresh directory for the sockets of one proxy's workers, readable by this user only.

    MONITOR streams every command with its arguments through it, so no other user may connect.
    """
    return tempfile.mkdtemp(prefix="kvstore-proxy-")  # mode 0700


def remove_directory(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


OneShot = Callable[[bytes], bytes]  # request argument -> reply bytes (then the connection closes)
Stream = Callable[[Any], Callable[[], None]]  # transport -> called when the connection ends


class _Peer(asyncio.Protocol):
    """One connection from a sibling: a request line, then a one-shot reply or a stream."""

    def __init__(self, one_shot: dict[bytes, OneShot], streams: dict[bytes, Stream]):
        self.one_shot = one_shot
        self.streams = streams
        self.transport: Any = None
        self.buf = b""
        self.on_close: Callable[[], None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.on_close is not None:
            return  # a stream's reader sends nothing more
        self.buf += data
        nl = self.buf.find(b"\n")
        if nl < 0:
            if len(self.buf) > _MAX_REQUEST_LINE:
                self.transport.abort()
            return
        name, _, arg = self.buf[:nl].partition(b" ")
        self.buf = b""
        if name in self.streams:
            self.on_close = self.streams[name](self.transport)
            return
        handler = self.one_shot.get(name)
        try:
            reply = handler(arg) if handler is not None else b'{"error": "unknown request"}'
        except Exception as exc:  # noqa: BLE001 - a sibling's bad request must not kill this worker
            log.warning("sibling_request_failed", request=name.decode(errors="replace"), error=str(exc))
            reply = b'{"error": "request failed"}'
        self.transport.write(reply)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.on_close is not None:
            self.on_close()
            self.on_close = None


class SiblingServer:
    """This worker's end of the channel: answers its siblings' requests."""

    def __init__(self, family: Family, loop: asyncio.AbstractEventLoop, one_shot: dict[bytes, OneShot],
                 streams: dict[bytes, Stream]):
        self.family = family
        self.loop = loop
        self.one_shot = one_shot
        self.streams = streams
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        if self.family.directory is None:
            return
        path = self.family.path(self.family.index)
        try:
            os.unlink(path)  # left by this index's previous process
        except FileNotFoundError:
            pass
        self.server = await self.loop.create_unix_server(lambda: _Peer(self.one_shot, self.streams), path)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
            try:
                os.unlink(self.family.path(self.family.index))
            except OSError:
                pass


async def ask(family: Family, request: bytes, timeout: float = ASK_TIMEOUT) -> dict[int, bytes | None]:
    """Send ``request`` (one line) to every sibling; each one's whole reply, None if it gave none in time."""

    async def one(index: int) -> bytes | None:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(family.path(index)), timeout)
            writer.write(request + b"\n")
            return await asyncio.wait_for(reader.read(), timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.info("sibling_unanswered", worker=index, request=request.split(b" ", 1)[0].decode(errors="replace"),
                     error=str(exc) or type(exc).__name__)
            return None
        finally:
            if writer is not None:
                writer.close()

    indexes = family.siblings()
    replies = await asyncio.gather(*(one(i) for i in indexes))
    return dict(zip(indexes, replies, strict=True))
