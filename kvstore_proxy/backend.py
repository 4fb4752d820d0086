"""Connections to the Redis masters: write buffers, reply FIFOs, failure, timeouts and reconnection.

Each group has two: the :class:`Backend` that RESP2 clients share, and its :class:`Resp3Backend`
twin (``backend.resp3``) that sends ``HELLO 3`` first and serves the clients that negotiated
RESP3; replies are forwarded raw, so a client must get them from a connection speaking its
protocol. The twin connects on its first request and lives and dies with its Backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from kvstore_cluster import tls
from kvstore_proxy import resp
from kvstore_proxy.datapath import BackendCore, Outbox, notify
from kvstore_proxy.sockets import set_nodelay

log = structlog.get_logger("kvstore.proxy.backend")

IDLE, CONNECTING, UP, DOWN, CLOSED = "idle", "connecting", "up", "down", "closed"
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


class _AuthProbe:
    """FIFO entry for the AUTH (or HELLO 3) sent on connect; a refusal takes the backend down."""

    __slots__ = ("backend", "t0", "what")

    def __init__(self, backend: Backend, what: str = "AUTH"):
        self.backend = backend
        self.t0 = time.monotonic()
        self.what = what

    session = None

    def done(self, raw: bytes | bytearray) -> None:
        if raw[:1] in (b"-", b"!"):
            text = bytes(raw[1:]).strip().decode(errors="replace")
            self.backend.abort(f"{self.what} refused: {text}")
        return None

    def fail(self, err: bytes) -> None:
        return None


class Refuser:
    """Stands in a slot table entry that must not reach Redis (fenced, unowned, group down).

    Shares ``up``/``refuse`` with :class:`Backend`, so the hot path needs no extra check.
    """

    __slots__ = ("error", "outbox", "resp3")
    up = False
    group = None

    def __init__(self, error: bytes, outbox: Outbox):
        self.error = error
        self.outbox = outbox
        self.resp3 = self  # the same refusal for RESP3 sessions (see Backend.resp3)

    def refuse(self, r: Any) -> None:
        done = r.fail(self.error)
        if done is not None:
            notify(done, self.outbox)

    def send(self, r: Any, raw: bytes) -> None:
        self.refuse(r)


class Backend(BackendCore, asyncio.Protocol):
    """One TCP connection to a group's master (reconnected with backoff) and its reply FIFO.

    The per-request half is compiled (datapath.BackendCore: ``send``, ``refuse``, ``flush``,
    ``data_received``, ``fifo``, ``up``, ``dirty``, ``retired``, ``transport``, ``outbox``, ``resp3``,
    ``error``); this is the connection's lifecycle: connect, greet, fail, reconnect, retire, time out.

    Every entry of the router's slot table has ``resp3``, the entry RESP3 sessions use instead:
    here the :class:`Resp3Backend` twin; a :class:`Refuser` is its own.
    """

    # Attributes the compiled half does not have; a new attribute must be added here.
    __slots__ = ('group', 'address', 'host', 'port', 'loop', 'password', 'connect_timeout', 'state',
                 'reason', 'backoff', 'connects', 'failures', '_retry', '_connect_task', 'preload')

    def __init__(self, group: str, address: str, outbox: Outbox, password: str | None = None,
                 connect_timeout: float = 2.0):
        self._setup(group, address, outbox, password, connect_timeout)
        self.resp3: Backend = Resp3Backend(self)

    def _setup(self, group: str, address: str, outbox: Outbox, password: str | None,
               connect_timeout: float) -> None:
        self.group = group
        self.address = address
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.outbox = outbox
        self.loop = outbox.loop
        self.password = password
        self.connect_timeout = connect_timeout
        self.state = CONNECTING
        self.up = True  # accepts requests (queued while the first connect is in flight)
        self.transport = None
        self.reason = ""
        self.error = resp.error(f"ERR backend {group} {address} is not connected")
        self.backoff = BACKOFF_MIN
        self.connects = 0
        self.failures = 0
        self._retry: asyncio.TimerHandle | None = None
        self._connect_task: asyncio.Task[Any] | None = None
        # What a fresh connection sends before any request (function libraries: registry.py), as
        # (FIFO entry, request bytes) pairs; None: nothing.
        self.preload: Callable[[Backend], list[tuple[Any, bytes]]] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._connect_task = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: self, self.host, self.port, ssl=tls.for_address(self.address)),
                self.connect_timeout)
        except (TimeoutError, OSError) as exc:
            if self.state == CLOSED:
                return
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            self._went_down(f"connect failed: {detail}")

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport
        if self.state == CLOSED:
            transport.abort()
            return
        set_nodelay(transport)
        self.transport = transport
        self._reset_reader()
        was = self.state
        self.state = UP
        self.up = True
        self.backoff = BACKOFF_MIN
        self.connects += 1
        first = [] if self.preload is None else self.preload(self)
        greeting = self._greeting()
        if greeting is not None:
            first.insert(0, greeting)
        # AUTH (or HELLO) goes first, then what every connection loads; requests queued meanwhile
        # follow them on the same connection.
        for entry, raw in reversed(first):
            self.fifo.appendleft(entry)
            self._queue_first(raw)
        if self.queued:
            self.flush()
        if was == DOWN:
            log.warning("backend_up", group=self.group, addr=self.address)
        else:
            log.info("backend_connected", group=self.group, addr=self.address)

    def _greeting(self) -> tuple[_AuthProbe, bytes] | None:
        if self.password:
            return _AuthProbe(self), resp.command([b"AUTH", self.password.encode()])
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.state == CLOSED:
            self._fail_all(f"ERR backend {self.group} {self.address} connection closed")
            return
        reason = self.reason or (f"connection lost: {exc}" if exc else "connection closed by the server")
        self.reason = ""
        self._went_down(reason)

    def _went_down(self, reason: str) -> None:
        pending = len(self.fifo)
        self.failures += 1
        self.state = DOWN
        self.up = False
        self.error = resp.error(f"ERR backend {self.group} {self.address} is down ({reason})")
        self._fail_all(f"ERR backend {self.group} {self.address} {reason}")
        if self.retired:
            self._retired_down()
            return
        log.warning("backend_down", group=self.group, addr=self.address, reason=reason,
                    pending=pending, retry_in=round(self.backoff, 3))
        self._retry = self.loop.call_later(self.backoff, self._reconnect)
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    def _reconnect(self) -> None:
        self._retry = None
        if self.state == DOWN and not self.retired:
            self.start()

    def _fail_all(self, text: str) -> None:
        self._drop_queued()
        fifo = self.fifo
        if not fifo:
            return
        err = resp.error(text)
        outbox = self.outbox
        while fifo:
            done = fifo.popleft().fail(err)
            if done is not None:
                notify(done, outbox)

    def abort(self, reason: str) -> None:
        """Drop the connection (its reply stream can no longer be trusted); pending requests fail."""
        self.reason = reason
        if self.transport is not None:
            self.transport.abort()

    def retire(self) -> None:
        """No new requests (the group moved elsewhere); close once the replies in flight are in.

        The RESP3 twin is retired too; the pair closes once both are drained, so the router
        keeps this Backend (and, through it, the twin's timeouts) until then.
        """
        self.retired = True
        self.resp3.retired = True
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if not self.fifo and not self.resp3.fifo:
            self.close()

    def abandon(self, why: str) -> None:
        """The group's master moved elsewhere: fail what is pending here now, drop both connections.

        Waiting for the old master's replies is unsafe: a frozen master (SIGSTOP, a long pause)
        that wakes executes the writes in its socket buffer and acknowledges them, then is
        demoted and loses them. So the requests in flight on this Backend and its RESP3 twin
        get an error saying their outcome is unknown, and the connections are aborted (not
        closed: a stopped peer would never drain the write buffer).
        """
        text = f"ERR backend {self.group} {self.address} {why} while the request was in flight; outcome unknown"
        for b in (self, self.resp3) if self.resp3 is not self else (self,):
            b.retired = True
            b.state = CLOSED
            b.up = False
            if b._retry is not None:
                b._retry.cancel()
                b._retry = None
            b._fail_all(text)
            if b.transport is not None:
                b.transport.abort()  # connection_lost finds nothing left to fail

    def _retired_down(self) -> None:
        # The old master is gone: nothing in flight on the twin will be answered either.
        self.close()

    def close(self) -> None:
        self.state = CLOSED
        self.up = False
        if self._retry is not None:
            self._retry.cancel()
        if self.transport is not None:
            self.transport.close()
        else:
            self._fail_all(f"ERR backend {self.group} {self.address} closed")
        if self.resp3 is not self and self.resp3.state != CLOSED:
            self.resp3.close()

    def check_timeout(self, now: float, timeout: float) -> None:
        fifo = self.fifo
        if fifo and now - fifo[0].t0 > timeout and self.transport is not None:
            # Redis answers in order, so a late reply would land on the wrong request: the
            # connection must go, and every request on it with it.
            log.warning("backend_timeout", group=self.group, addr=self.address,
                        pending=len(fifo), timeout=timeout)
            self.reason = f"timeout: no reply within {timeout:g}s"
            self.transport.abort()
        twin = self.resp3
        if twin is not self and twin.fifo:
            twin.check_timeout(now, timeout)

    # --- called by the compiled reply loop -------------------------------------------------------

    def _protocol_failure(self, error: str) -> None:
        """Garbage or an unsolicited reply: nothing after it can be matched to a request."""
        log.error("backend_protocol_error", group=self.group, addr=self.address, error=error)
        self.abort(f"protocol error from Redis: {error}")

    def _drop_push(self, raw: bytes) -> None:
        """A RESP3 push (``>``) answers no request: pub/sub and tracking are refused, so Redis
        should send none; should one come, it must not take the place of a reply."""
        log.warning("backend_push_dropped", group=self.group, addr=self.address, head=raw[:60])

    def describe(self) -> dict[str, Any]:
        twin = self.resp3
        return {"group": self.group, "addr": self.address, "state": self.state,
                "pending": len(self.fifo), "connects": self.connects, "failures": self.failures,
                "resp3_state": twin.state, "resp3_pending": len(twin.fifo)}


class Resp3Backend(Backend):
    """A group master's connection for the clients that negotiated RESP3 (``HELLO 3`` first).

    Created with its :class:`Backend` but connected on its first request (``flush``), so a
    proxy whose clients all speak RESP2 opens no extra connections. Its replies may be any
    RESP3 type; a push (``>``) answers no request and is dropped (pub/sub and tracking are
    refused, so Redis should never send one).
    """

    __slots__ = ("primary",)

    def __init__(self, primary: Backend):
        self._setup(primary.group, primary.address, primary.outbox, primary.password, primary.connect_timeout)
        self.primary = primary
        self.resp3 = self
        self.state = IDLE
        self.error = resp.error(f"ERR backend {self.group} {self.address} (RESP3) is not connected")

    def _greeting(self) -> tuple[_AuthProbe, bytes]:
        args = [b"HELLO", b"3"]
        if self.password:
            args += [b"AUTH", b"default", self.password.encode()]
        return _AuthProbe(self, "HELLO 3"), resp.command(args)

    def flush(self) -> None:
        if self.transport is None and self.state == IDLE and self.queued:
            self.state = CONNECTING
            self.start()
        Backend.flush(self)

    def _close_if_drained(self) -> None:
        if self.retired:
            self.primary._close_if_drained()

    def _retired_down(self) -> None:
        self.state = CLOSED
        self.primary._close_if_drained()
