"""A small read-only HTTP/1.1 server on an asyncio loop: /metrics of the proxy and sentinel, the admin's web page.

Only GET and HEAD, one request per connection (``Connection: close``), a few routes matched by
exact path or by prefix. Anything else gets a clean error and the connection closes:

    unknown path                     404 Not Found
    other method on a known path     405 Method Not Allowed (with Allow)
    unparsable request line/headers  400 Bad Request
    request head over 8 KiB          431 Request Header Fields Too Large
    a body (Content-Length > 0)      413 Content Too Large (nothing here takes one)

A handler returns a :class:`Response`, or a :class:`Stream` (server-sent events) that keeps the
connection until the client leaves or the server closes. Nothing here blocks the loop: handlers
are coroutines and must do their blocking work elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog

log = structlog.get_logger("kvstore.http")

# Prometheus's text exposition format, which prometheus_client's generate_latest writes (and every
# Prometheus 2.x scrapes).
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD = 8192
READ_TIMEOUT = 10.0  # seconds a client has to send its request head
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Request:
    method: str
    path: str  # decoded, without the query string
    query: str
    headers: dict[str, str]


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stream:
    """A ``text/event-stream`` reply: each item of ``events`` is one event's data (already text)."""

    events: AsyncIterator[str]


Handler = Callable[[Request], Awaitable[Response | Stream]]


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(status, (json.dumps(obj, sort_keys=True) + "\n").encode(), "application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Errors as JSON: ``{"error": "...", "status": N}``, whatever the route."""
    return Response(status, (json.dumps({"error": message, "status": status}) + "\n").encode(),
                    "application/json", headers or {})


class HttpServer:
    """Routes ``(path or prefix) -> handler``; ``start`` listens, ``close`` stops it and its streams."""

    def __init__(self, host: str, port: int, reuse_port: bool = False):
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self.exact: dict[str, Handler] = {}
        self.prefixes: list[tuple[str, Handler]] = []
        self.server: asyncio.base_events.Server | None = None
        self._streams: set[asyncio.StreamWriter] = set()

    def route(self, path: str, handler: Handler) -> None:
        """``/x`` matches exactly; ``/x/`` matches every path below it too."""
        if path.endswith("/") and path != "/":
            self.prefixes.append((path, handler))
        self.exact[path.rstrip("/") or "/"] = handler

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, self.port, reuse_port=self.reuse_port,
                                                 reuse_address=True, limit=MAX_HEAD * 2)
        sockets: Any = self.server.sockets or []
        if sockets and self.port == 0:
            self.port = sockets[0].getsockname()[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self._streams):
            writer.close()
        self._streams.clear()

    def _find(self, path: str) -> Handler | None:
        handler = self.exact.get(path)
        if handler is not None:
            return handler
        for prefix, h in self.prefixes:
            if path.startswith(prefix):
                return h
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        try:
            request, problem = await self._read(reader)
            if request is None:
                if problem is not None:
                    await self._write(writer, problem, head_only=False)
                return
            handler = self._find(request.path)
            if handler is None:
                reply: Response | Stream = error_response(404, f"no such path: {request.path}")
            elif request.method not in ("GET", "HEAD"):
                reply = error_response(405, f"method {request.method} not allowed (read-only: GET, HEAD)",
                                       {"Allow": "GET, HEAD"})
            else:
                try:
                    reply = await handler(request)
                except Exception as exc:  # noqa: BLE001 - one bad request must not take the server down
                    log.exception("http_handler_failed", path=request.path, error=f"{type(exc).__name__}: {exc}")
                    reply = error_response(500, f"internal error: {type(exc).__name__}")
            if isinstance(reply, Stream):
                await self._stream(writer, reply, head_only=request.method == "HEAD")
            else:
                await self._write(writer, reply, head_only=request.method == "HEAD")
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self._streams.discard(writer)
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> tuple[Request | None, Response | None]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except asyncio.LimitOverrunError:
            return None, error_response(431, f"request head over {MAX_HEAD} bytes")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return None, None  # connected and left (a port check)
            return None, error_response(400, "incomplete request head")
        if len(head) > MAX_HEAD:
            return None, error_response(431, f"request head over {MAX_HEAD} bytes")
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            if not version.startswith("HTTP/1.") or not method.isalpha() or not method.isupper():
                raise ValueError(lines[0])
            headers = {}
            for line in lines[1:]:
                if not line:
                    continue
                name, sep, value = line.partition(":")
                if not sep or not name or name != name.strip():
                    raise ValueError(line)
                headers[name.lower()] = value.strip()
            parts = urlsplit(target)
            if not parts.path.startswith("/"):
                raise ValueError(target)
        except ValueError:
            return None, error_response(400, "malformed HTTP request")
        length = headers.get("content-length", "0")
        if not length.isdigit():
            return None, error_response(400, "bad Content-Length")
        if int(length) > 0 or "transfer-encoding" in headers:
            return None, error_response(413, "this server takes no request body")
        return Request(method, unquote(parts.path), parts.query, headers), None

    async def _write(self, writer: asyncio.StreamWriter, r: Response, head_only: bool) -> None:
        headers = {"Content-Type": r.content_type, "Content-Length": str(len(r.body)), "Connection": "close",
                   "Cache-Control": "no-store", **r.headers}
        head = f"HTTP/1.1 {r.status} {_REASONS.get(r.status, '')}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        writer.write(head.encode("latin-1") + (b"" if head_only else r.body))
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, s: Stream, head_only: bool) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
                     b"Connection: close\r\nX-Accel-Buffering: no\r\n\r\n")
        await writer.drain()
        if head_only:
            return
        self._streams.add(writer)
        async for data in s.events:
            if writer.is_closing():
                break
            writer.write(("".join(f"data: {line}\n" for line in data.split("\n")) + "\n").encode())
            await writer.drain()
