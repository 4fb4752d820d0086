"""Connections to the Redis masters: write buffers, reply FIFOs, failure, timeouts and reconnection.

Each group has two: the :class:`Backend` that RESP2 clients share, and its :class:`Resp3Backend`
twin (``backend.resp3``) that sends ``HELLO 3`` first and serves the clients that negotiated
RESP3; replies are forwarded raw, so a client must get them from a connection speaking its
protocol. The twin connects on its first request and lives and dies with its Backend.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import deque
from typing import Any

import hiredis
import structlog

from kvstore_proxy import resp
from kvstore_proxy.outbox import Outbox
from kvstore_proxy.request import Part, Reply

log = structlog.get_logger("kvstore.proxy.backend")

IDLE, CONNECTING, UP, DOWN, CLOSED = "idle", "connecting", "up", "down", "closed"
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
_NOT_ENOUGH = object()


_NOT_BULK = re.compile(rb"\r\n[+=(]")  # an element hiredis also reads as bytes, but without "$N"


def bulk_array_end(buf: bytes | bytearray, p: int, n: int, value: list[Any]) -> int:
    """End of the array (``*N``) or set (``~N``) at ``p`` if hiredis read it as ``value`` and every
    element is a bulk string or a RESP2 null (``$-1``); -1 if that is not proven (the caller
    then compares bytes).

    Each ``$len`` element takes ``len + digits(len) + 5`` bytes, a null 5: the sum needs no
    pass over the bytes. It holds only if every element has that form: ``b"".join`` refuses
    anything hiredis did not read as bytes or None (integers, errors, nested aggregates), and
    the first element of another form would start exactly where the arithmetic expects an
    element, right after a CRLF inside the span. Of those forms, the ones hiredis also reads as
    bytes (``+`` ``=`` ``(``) are looked for with ``memchr``, then with the exact pattern if one
    of the bytes occurs (a payload may hold it; then the caller's byte comparison decides);
    the other nulls (``_``, ``*-1``, ``%-1``, ``~-1``, ``>-1``) only when there are nulls. Redis
    writes lengths canonically, and hiredis refuses any other spelling.
    """
    nulls = value.count(None)
    if nulls:
        value = [x for x in value if x is not None]
    total = len(b"".join(value))
    count = len(value)
    hi = max(map(len, value), default=0)
    if hi < 10:
        digits = count
    elif hi < 100 and min(map(len, value)) >= 10:
        digits = 2 * count
    else:
        digits = len("".join(map(str, map(len, value))))
    end = buf.find(b"\r\n", p) + 2 + total + 5 * (count + nulls) + digits
    if end > n or buf[end - 2 : end] != b"\r\n":
        return -1
    find = buf.find
    if (find(b"+", p, end) >= 0 or find(b"=", p, end) >= 0 or find(b"(", p, end) >= 0) \
            and _NOT_BULK.search(buf, p, end) is not None:
        return -1
    if nulls and (find(b"_", p, end) >= 0 or find(b"*", p + 1, end) >= 0 or find(b"%", p, end) >= 0
                  or find(b"~", p + 1, end) >= 0 or find(b">", p, end) >= 0):
        return -1
    return end


def uniform_bulk_array_end(buf: bytes | bytearray, p: int, n: int) -> int:
    """End of the array at ``p`` if it is complete and all its elements are bulk strings of the
    first one's length (LRANGE of equal-sized values, MGET of equal-sized values: common
    shapes); -1 otherwise.

    Such elements all take ``E`` bytes, so the array is a grid: strided slices (one per header
    byte, and the CR and LF closing each element), each compared in C, prove every element is
    exactly ``$size`` CRLF, ``size`` bytes, CRLF, without building any object per element.
    """
    nl = buf.find(b"\r\n", p)
    q = nl + 2
    if nl < 0 or q >= n or buf[q] != 36:
        return -1
    nl2 = buf.find(b"\r\n", q)
    if nl2 < 0:
        return -1
    try:
        count = int(buf[p + 1 : nl])
        size = int(buf[q + 1 : nl2])
    except ValueError:
        return -1
    if count <= 0 or size < 0:
        return -1
    width = nl2 + 4 + size - q
    end = q + count * width
    if end > n:
        return -1
    k = q
    for byte in buf[q : nl2 + 2]:  # "$", the digits, CR, LF
        if buf[k:end:width].count(byte) != count:
            return -1
        k += 1
    k = q + width - 2
    if buf[k:end:width].count(13) != count or buf[k + 1 : end : width].count(10) != count:
        return -1
    return end


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
            _notify(done, self.outbox)

    def send(self, r: Any, raw: bytes) -> None:
        self.refuse(r)


def _notify(r: Reply, outbox: Outbox) -> None:
    s = r.session
    if s is not None and not s.dirty:
        s.dirty = True
        outbox.sessions.append(s)
        outbox.schedule()


class Backend(asyncio.Protocol):
    """One TCP connection to a group's master (reconnected with backoff) and its reply FIFO.

    Requests are appended to ``out`` and ``fifo`` together; ``out`` is written once per loop
    iteration by the :class:`Outbox`. Replies are found with :func:`resp.scan_reply` and handed
    over as raw bytes in FIFO order.

    Every entry of the router's slot table has ``resp3``, the entry RESP3 sessions use instead:
    here the :class:`Resp3Backend` twin; a :class:`Refuser` is its own.
    """

    # Slots: the hot path reads these attributes for every reply, and CPython 3.11 gives up its
    # fast attribute access on instances with 30 or more attributes in a __dict__. A new
    # attribute must be added here.
    __slots__ = ("resp3", 'group', 'address', 'host', 'port', 'outbox', 'loop', 'password',
                 'connect_timeout', 'state', 'up', 'transport', 'fifo', 'out', 'dirty', 'retired',
                 'reason', 'error', 'backoff', 'connects', 'failures', 'sent', '_carry', '_stack', '_scan',
                 '_retry', '_aux', '_aux_pos', '_value', '_value_end', '_parser', '_connect_task')

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
        self.transport: asyncio.Transport | None = None
        self.fifo: deque[Any] = deque()
        self.out: list[bytes] = []
        self.dirty = False
        self.retired = False
        self.reason = ""
        self.error = resp.error(f"ERR backend {group} {address} is not connected")
        self.backoff = BACKOFF_MIN
        self.connects = 0
        self.failures = 0
        self.sent = 0
        self._carry: bytearray | None = None
        self._stack: list[int] = []
        self._scan = 0
        self._retry: asyncio.TimerHandle | None = None
        self._aux: hiredis.Reader | None = None  # see _array_end
        self._aux_pos = -1
        self._value: Any = None  # the parsed reply ending at _value_end, for a Part
        self._value_end = -1
        self._parser = hiredis.Reader(notEnoughData=_NOT_ENOUGH)  # always left empty
        self._connect_task: asyncio.Task[Any] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._connect_task = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: self, self.host, self.port), self.connect_timeout)
        except (TimeoutError, OSError) as exc:
            if self.state == CLOSED:
                return
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            self._went_down(f"connect failed: {detail}")

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport
        if self.state == CLOSED:
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.transport = transport
        self._carry = None
        self._stack = []
        self._scan = 0
        was = self.state
        self.state = UP
        self.up = True
        self.backoff = BACKOFF_MIN
        self.connects += 1
        greeting = self._greeting()
        if greeting is not None:
            # AUTH (or HELLO) goes first; requests queued meanwhile follow it on the same connection.
            self.fifo.appendleft(greeting[0])
            self.out.insert(0, greeting[1])
        if self.out:
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
        self.out.clear()
        fifo = self.fifo
        if not fifo:
            return
        err = resp.error(text)
        outbox = self.outbox
        while fifo:
            done = fifo.popleft().fail(err)
            if done is not None:
                _notify(done, outbox)

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

    # --- hot path -------------------------------------------------------------------------

    def refuse(self, r: Any) -> None:
        done = r.fail(self.error)
        if done is not None:
            _notify(done, self.outbox)

    def send(self, r: Any, raw: bytes) -> None:
        if self.up:
            self.fifo.append(r)
            self.out.append(raw)
            if not self.dirty:
                self.dirty = True
                self.outbox.backends.append(self)
                self.outbox.schedule()
        else:
            self.refuse(r)

    def flush(self) -> None:
        self.dirty = False
        out = self.out
        if out and self.transport is not None:
            self.sent += len(out)
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()

    def data_received(self, data: bytes) -> None:
        carry = self._carry
        if carry is not None:
            carry += data
            buf: bytes | bytearray = carry
        else:
            buf = data
        n = len(buf)
        p = 0
        fifo = self.fifo
        stack = self._stack
        find = buf.find
        outbox = self.outbox
        dirty = outbox.sessions
        notified = False
        try:
            while p < n:
                if stack:
                    end, complete = resp.scan_reply(buf, self._scan, n, stack)
                    if not complete:
                        self._scan = end
                        break
                    if buf[p] == 62:
                        p = self._drop_push(buf, p, end)
                        continue
                else:
                    c = buf[p]
                    if c == 36:  # $
                        nl = find(b"\r\n", p)
                        if nl < 0:
                            break
                        try:
                            size = int(buf[p + 1 : nl])
                        except ValueError:
                            # RESP3's streamed string "$?" (Redis 7.0 sends none), or garbage: the
                            # full scanner decides; the size makes the line below give its end.
                            end, complete = resp.scan_reply(buf, p, n, stack)
                            if not complete:
                                self._scan = end
                                break
                            size = end - nl - 4
                        end = nl + size + 4 if size >= 0 else nl + 2
                        if end > n:
                            break
                    elif c == 43 or c == 58 or c == 45 or c == 95 or c == 44 or c == 35:  # + : -  _ , #
                        end = find(b"\r\n", p) + 2
                        if end < 2:
                            break
                    else:
                        end = uniform_bulk_array_end(buf, p, n) if c == 42 else -1
                        if end >= 0 and fifo[0].__class__ is not Reply:
                            # A Part (MGET) wants the value: its exact bytes, one reusable reader.
                            end = self._parse_exact(buf, p, end)
                        if end < 0 and (c == 42 or c == 37 or c == 126):
                            end = self._aggregate_end(buf, p, n, c)
                        if end < 0:
                            end, complete = resp.scan_reply(buf, p, n, stack)
                            if not complete:
                                self._scan = end
                                break
                        if c == 62:
                            p = self._drop_push(buf, p, end)
                            continue
                raw = buf[p:end]
                p = end
                r = fifo.popleft()
                if r.__class__ is Reply:
                    r.data = raw
                else:
                    if r.__class__ is Part and self._value_end == end:
                        r = r.parent.part_done(r.index, self._value)  # already parsed
                    else:
                        r = r.done(raw)
                    if r is None:
                        continue
                s = r.session
                if s is not None and not s.dirty:
                    if len(s.fifo) == 1 and s.fifo[0] is r and s.deliver(r):
                        continue  # the client's only request (pipeline depth 1): written now
                    s.dirty = True
                    dirty.append(s)
                    notified = True
        except (ValueError, IndexError, resp.ProtocolError) as exc:
            # Garbage or an unsolicited reply: nothing after it can be matched to a request.
            log.error("backend_protocol_error", group=self.group, addr=self.address, error=str(exc))
            self.abort(f"protocol error from Redis: {exc}")
            return
        self._aux_pos = self._value_end = -1  # buf is rebased on the next read
        if p >= n:
            self._carry = None
        elif carry is None:
            self._carry = bytearray(memoryview(buf)[p:])
            self._scan -= p
        else:
            del carry[:p]
            self._scan -= p
        if notified:
            outbox.schedule()
        if self.retired and not fifo:
            self._close_if_drained()

    def _aggregate_end(self, buf: bytes | bytearray, p: int, n: int, c: int) -> int:
        """End of the array (or RESP3 set/map) reply at ``p`` found in C, or -1 to let the Python scanner do it.

        hiredis parses the reply (the reader is fed once per read and reused for the replies
        that follow); its value must account for every byte. An array or set of bulk strings
        (LRANGE, MGET, SMEMBERS in RESP3) is measured by arithmetic, see :func:`bulk_array_end`.
        Anything else that hiredis read as a list or a map is proven the slow way:
        ``pack_command`` re-encodes it canonically and a byte comparison shows the reply is
        exactly those bytes (any other element type, or a non-canonical encoding, makes the
        comparison fail). Scanning LRANGE's 100 elements in Python would cost more than the
        rest of the request. RESP3 answers HGETALL with a map (``%N``, hiredis gives a dict).
        The parsed value is kept in ``_value`` for a :class:`Part`, which would parse it again.
        """
        aux = self._aux
        if self._aux_pos != p or aux is None:
            aux = self._aux = hiredis.Reader(notEnoughData=_NOT_ENOUGH)
            aux.feed(buf, p, n - p)  # type: ignore[arg-type]  # hiredis reads any buffer
        try:
            value = aux.gets()
        except (hiredis.ProtocolError, TypeError):  # TypeError: a map key hiredis cannot hash
            value = None
        end = -1
        try:
            if value.__class__ is list and value and c != 37:
                end = bulk_array_end(buf, p, n, value)
                if end < 0:
                    packed = hiredis.pack_command(tuple(value))
                    end = p + len(packed)
                    if not (end <= n and (buf[p:end] == packed if c == 42 else buf[p + 1 : end] == packed[1:])):
                        end = -1
            elif value.__class__ is dict and value and c == 37:
                flat = tuple(x for kv in value.items() for x in kv)
                packed = hiredis.pack_command(flat)
                body = memoryview(packed)[packed.index(b"\r\n") + 2 :]  # without the *2N header
                head = b"%%%d\r\n" % len(value)
                end = p + len(head) + len(body)
                if not (end <= n and buf[p : p + len(head)] == head and buf[p + len(head) : end] == body):
                    end = -1
        except TypeError:
            end = -1
        if end < 0:
            self._aux_pos = -1
            return -1
        self._aux_pos = self._value_end = end
        self._value = value
        return end

    def _parse_exact(self, buf: bytes | bytearray, p: int, end: int) -> int:
        """Parse the reply known to span ``buf[p:end]`` into ``_value``; ``end``, or -1 if hiredis
        does not agree (then the caller's general path decides)."""
        parser = self._parser
        parser.feed(buf, p, end - p)  # type: ignore[arg-type]  # hiredis reads any buffer
        try:
            value = parser.gets()
        except hiredis.ProtocolError:
            value = _NOT_ENOUGH
        if value is _NOT_ENOUGH or parser.has_data():
            self._parser = hiredis.Reader(notEnoughData=_NOT_ENOUGH)
            return -1
        self._value = value
        self._value_end = end
        return end

    def _drop_push(self, buf: bytes | bytearray, p: int, end: int) -> int:
        """A RESP3 push (``>``) answers no request: pub/sub and tracking are refused, so Redis
        should send none; should one come, it must not take the place of a reply."""
        log.warning("backend_push_dropped", group=self.group, addr=self.address, head=bytes(buf[p : min(end, p + 60)]))
        return end

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
        if self.transport is None and self.state == IDLE and self.out:
            self.state = CONNECTING
            self.start()
        Backend.flush(self)

    def _close_if_drained(self) -> None:
        if self.retired:
            self.primary._close_if_drained()

    def _retired_down(self) -> None:
        self.state = CLOSED
        self.primary._close_if_drained()
