"""A client connection: parse requests, route them, and write replies back in request order.

::

    client bytes
      │ data_received ─► hiredis.Reader.gets() ─► args        (inline lines: resp.split_inline)
      │                    └─ partial request: _check_partial (bulk/multibulk limits, like Redis)
      ▼
    route: routes[args[0]] ──KEYED fast path──► slot_backend[key_slot(key)]         (router.py)
      │      (after HELLO 3 the session routes with router3.py: each group's RESP3 connection)
      │      └─ otherwise _slow: commands.lookup ─► arity ─► auth ─► kind
      │             MULTI ─► multikey.split ─► SplitReply + one Part per group       (multikey.py)
      │             SAME_SLOT ─► -CROSSSLOT or the slot's backend
      │             PROXY ─► answers.HANDLERS: answered here or fanned out          (answers.py, fanout.py)
      │             REFUSED ─► one error naming the command
      ▼
    Reply appended to this session's FIFO *before* it is sent              (request.py)
      │
      ▼
    Backend.send: request bytes to its write buffer; Outbox flushes once per loop iteration
      │                                                                     (backend.py, outbox.py)
      ▼
    Backend.data_received ─► reply bounds ─► fifo.popleft().data = raw reply
      │   (one-line types: find CRLF; arrays: uniform_bulk_array_end / hiredis + bulk_array_end,
      │    in C; anything else: resp.scan_reply)
      │   (Part: the parsed value, SplitReply.merge once every part is in)
      ▼
    Session.deliver: the client's only pending request, written at once; otherwise
    Session.flush: write every finished reply at the head of the FIFO, in order; stats, slowlog
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from binascii import crc_hqx
from collections import deque
from typing import TYPE_CHECKING, Any

import hiredis
import structlog

from kvstore_cluster.slots import key_slot
from kvstore_proxy import answers, blocking, commands, multikey, pubsub, resp, transactions
from kvstore_proxy.clientstate import ClientState
from kvstore_proxy.commands import Kind
from kvstore_proxy.request import Reply

if TYPE_CHECKING:
    from kvstore_proxy.server import Worker

log = structlog.get_logger("kvstore.proxy.session")

_NOT_ENOUGH = object()  # hiredis returns False for "need more data" by default; False is ambiguous
_INLINE_MAX = 64 * 1024  # Redis's PROTO_INLINE_MAX_SIZE
_MAX_MULTIBULK = 1024 * 1024  # Redis's limit for an unauthenticated client; we apply it to all
_MAX_PENDING = 100_000  # replies outstanding before we stop reading this client
_NOAUTH = resp.error("NOAUTH Authentication required.")
_CROSSSLOT = resp.error("CROSSSLOT Keys in request don't hash to the same slot")
_BLEN = bytes.__len__  # raises TypeError for anything hiredis parsed that is not a bulk string
# hiredis allocates an array's list when it reads its header, before any element arrives: a header
# with a huge count must never reach it. A chunk that may hold one is validated in Python first.
_BIG_COUNT = re.compile(rb"\*[0-9]{7}")


class Session(asyncio.Protocol):
    """One client connection (an ``asyncio.Protocol``: no task per request, ever)."""

    # Slots: fast attribute access whatever their number (see Backend); add new ones here.
    __slots__ = ('worker', 'router', 'outbox', 'id', 'addr', 'laddr', 'name', 'protocol', 'enc',
                 'lib_name', 'lib_ver', 'created', 'last_active', 'last_cmd', 'transport', 'fifo', 'dirty',
                 'authenticated', 'routes', '_reader', '_carry', '_vpos', '_vleft', '_tail', '_closing',
                 '_close_after', '_paused_writing', '_paused_pending', 'state', 'user', 'acl', 'buckets')

    def __init__(self, worker: Worker):
        self.worker = worker
        self.router = worker.router
        self.outbox = worker.outbox
        self.id = 0
        self.addr = "?"
        self.laddr = "?"
        self.name = b""
        self.protocol = 2
        self.enc: resp.Resp2 = resp.RESP2  # how proxy-built replies are encoded (set_protocol)
        self.lib_name = b""
        self.lib_ver = b""
        self.created = time.time()
        self.last_active = time.monotonic()
        self.last_cmd = b"NULL"
        self.transport: asyncio.Transport | None = None
        self.fifo: deque[Reply] = deque()
        self.dirty = False
        # The user (acl.Permissions); ``acl`` is the same object when it restricts anything, else
        # None; ``buckets`` are the request rates it draws from (limits.py), empty for most.
        self.user = worker.users.default
        self.acl = None
        self.buckets: tuple[Any, ...] = ()
        self.authenticated = self.user.nopass and self.user.enabled
        self.routes = worker.routes if self.authenticated else {}
        self._reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH)
        self._carry: bytearray | None = None
        self._vpos = 0  # how far the partial request at the start of _carry has been validated
        self._vleft = 0  # bulk strings of the partial request not yet validated
        self._tail = b""  # the end of the last read, for _BIG_COUNT across reads
        self._closing = False  # no more requests: a protocol error or QUIT is being answered
        self._close_after: Reply | None = None
        self._paused_writing = False
        self._paused_pending = False
        # Transaction, held requests, blocked command, subscriptions (clientstate.py); None for
        # the plain clients that use none of them.
        self.state: ClientState | None = None

    # --- connection -----------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.laddr = f"{local[0]}:{local[1]}" if isinstance(local, tuple) else str(local)
        limits = self.worker.limits
        refusal = limits.connect(self.addr)
        if refusal is None:
            if not self.worker.accept(self):
                refusal = resp.error("ERR max number of clients reached")
            elif self.authenticated:
                refusal = limits.login(self.user.name, self.user.max_connections)
                if refusal is not None:
                    self.worker.forget(self)
                    self.id = 0
            if refusal is not None:
                limits.disconnect(self.addr)
        if refusal is not None:
            transport.write(refusal)
            transport.close()
            self.transport = None
            return
        self.set_user(self.user)
        log.debug("client_connected", client=self.id, addr=self.addr)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None and self.id == 0:
            return
        self.transport = None
        self._closing = True
        self.worker.forget(self)
        limits = self.worker.limits
        limits.disconnect(self.addr)
        if self.authenticated:
            limits.logout(self.user.name)
        if self.state is not None:
            self.state.disconnected()
        log.debug("client_disconnected", client=self.id, addr=self.addr, pending=len(self.fifo))
        # Replies still on their way from backends land on Reply objects nobody reads; the
        # backend FIFOs stay aligned because every request still gets its reply there.

    def pause_writing(self) -> None:
        # The client does not read its replies: stop reading its requests until it does.
        self._paused_writing = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self.transport is not None and not self._paused_pending and not self._closing:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # --- requests -------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        carry = self._carry
        if carry is not None:
            carry += data
            buf: bytes | bytearray = carry
        else:
            buf = data
        n = len(buf)
        pos = 0
        tail = self._tail
        # A huge count spanning two reads starts at the last '*' of the earlier one's last 8
        # bytes; most reads end far from any '*', so most reads keep no tail and check nothing.
        star = data.find(b"*", max(0, len(data) - 8))
        if star >= 0:
            self._tail = data[star:]
        elif tail and len(data) < 8 and data.isdigit():
            self._tail = tail + data  # a count arriving a few digits per read
        else:
            self._tail = b""
        refused = None
        if _BIG_COUNT.search(data) or (tail and _BIG_COUNT.search(tail + data[:8])):
            # Serve the requests before the bad one, as Redis does, but never feed it to hiredis.
            q, _, refused = validate(buf, 0, n, 0, self.worker.config.max_request_size)
            if refused:
                keep = len(data) - (n - q)
                data = data[:keep] if keep > 0 else b""
                n = q
        reader = self._reader
        reader.feed(data)
        t0 = time.monotonic()
        self.last_active = t0
        fifo = self.fifo
        routes = self.routes
        slot_backend = self.router.slot_backend
        command = resp.command
        max_bulk = self.worker.config.max_request_size
        try:
            while pos < n:
                if buf[pos] != 42:  # not '*': an inline command, as telnet users type them
                    nl = buf.find(b"\n", pos)
                    if nl < 0:
                        if n - pos > _INLINE_MAX:
                            self._protocol_error("too big inline request")
                            return
                        # Wait for the end of the line; hiredis must not keep these bytes.
                        self._reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH)
                        break
                    pos = self._inline(buf, pos, nl, n, t0)
                    if self._closing:
                        break
                    reader = self._reader
                    routes = self.routes
                    slot_backend = self.router.slot_backend
                    continue
                args = reader.gets()
                if args is _NOT_ENOUGH:
                    break
                if not args:  # "*0" / "*-1": Redis skips these silently
                    pos += 4 if args is not None else 5
                    continue
                # Clients send canonical RESP, so the re-encoded request is the bytes it came
                # from: that is how we know where the next one starts in ``buf``. Encoding
                # rejects (TypeError) integers, errors and nested arrays inside the request;
                # the byte comparison the elements hiredis also reads as strings (``+foo``,
                # ``=``, ``(``), which would otherwise shift every later request.
                raw = command(args)
                if not buf.startswith(raw, pos):
                    raise resp.ProtocolError("request is not canonical multibulk")
                size = len(raw)
                pos += size
                if size > max_bulk and max(map(_BLEN, args)) > max_bulk:
                    self._protocol_error("invalid bulk length")
                    return
                route = routes.get(args[0])
                if route is not None and route.nmin <= len(args) <= route.nmax:
                    # KEYED fast path: one key at a fixed position. slots.key_slot and Backend.send
                    # are inlined here on purpose: two Python calls less per request, the hottest
                    # loop of the proxy (profiled). Keep them in step with those two.
                    key = args[route.key]
                    if 123 in key:  # '{' (an int is a memchr; b"{" in key costs twice key.find)
                        s = key.find(b"{")
                        e = key.find(b"}", s + 1)
                        if e > s + 1:
                            key = key[s + 1 : e]
                    b = slot_backend[crc_hqx(key, 0) & 0x3FFF]
                    r = Reply(self, t0, route.stat, args)
                    fifo.append(r)
                    if b.up:
                        b.fifo.append(r)
                        b.out.append(raw)
                        if not b.dirty:
                            b.dirty = True
                            self.outbox.backends.append(b)
                            self.outbox.schedule()
                    else:
                        b.refuse(r)
                else:
                    self._slow(args, raw, t0)
                    if self._closing:
                        break
                    routes = self.routes
                    slot_backend = self.router.slot_backend
        except (TypeError, hiredis.ProtocolError, resp.ProtocolError) as exc:
            # Say what Redis would say: find the offending byte ourselves.
            _, _, problem = validate(buf, pos, n, 0, self.worker.config.max_request_size)
            self._protocol_error(problem or _protocol_message(exc))
            return
        if refused:
            self._protocol_error(refused)
            return
        if pos >= n:
            self._carry = None
            self._vpos = 0
        else:
            if carry is None:
                self._carry = bytearray(memoryview(buf)[pos:])
            else:
                del carry[:pos]
            if pos:
                self._vpos = 0
            if not self._closing:
                problem = self._check_partial()
                if problem:
                    self._protocol_error(problem)
                    return
        if fifo:
            if len(fifo) > _MAX_PENDING and not self._paused_pending and self.transport is not None:
                self._paused_pending = True
                self.transport.pause_reading()
            if fifo[0].data is not None:
                self.flush()

    def _inline(self, buf: bytes | bytearray, pos: int, nl: int, n: int, t0: float) -> int:
        """Handle the inline command line ``buf[pos:nl]``; return the position after it."""
        line = bytes(buf[pos:nl])
        pos = nl + 1
        # hiredis was fed these bytes too: restart it at the next request.
        self._reader = reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH)
        if pos < n:
            reader.feed(bytes(memoryview(buf)[pos:]))
        args = resp.split_inline(line)
        if args:
            self._slow(args, resp.command(args), t0)
        return pos

    def _check_partial(self) -> str | None:
        """Validate the incomplete request at the start of ``_carry`` as far as it goes, like Redis.

        hiredis waits for a declared length to arrive in full; Redis refuses it at once if it is
        too big. Resumes where the last call stopped, so a request arriving in many reads is
        checked in linear time.
        """
        buf = self._carry
        assert buf is not None
        p, left = (self._vpos, self._vleft) if self._vpos else (0, 0)
        p, left, problem = validate(buf, p, len(buf), left, self.worker.config.max_request_size)
        self._vpos, self._vleft = p, left
        return problem

    def _protocol_error(self, message: str) -> None:
        """Answer ``-ERR Protocol error: ...`` after the replies already owed, then close."""
        self.worker.stats.protocol_errors += 1
        log.info("client_protocol_error", client=self.id, addr=self.addr, error=message)
        self._closing = True
        r = Reply(self, time.monotonic(), self.worker.stat_for(b"(protocol)"), [])
        r.data = resp.error(f"ERR Protocol error: {message}")
        self.fifo.append(r)
        self._close_after = r
        if self.transport is not None:
            self.transport.pause_reading()
        if self.fifo[0].data is not None:
            self.flush()

    def _slow(self, args: list[bytes], raw: bytes, t0: float) -> None:
        """Everything but the KEYED fast path: lookup, arity, auth, then by kind."""
        worker = self.worker
        st = self.state
        if st is not None and st.held:
            st.keep(args, raw, t0)  # behind a lease's reply (clientstate.py)
            return
        spec = commands.lookup(args)
        if spec is None:
            if len(args) > 1 and args[0].lower() == b"client" and args[1].lower() == b"setinfo" \
                    and self.authenticated:
                self.answer(worker.stat_for(b"client|setinfo"), args, t0, answers.client_setinfo(self, args))
                return
            self.answer(worker.stat_for(b"(unknown)"), args, t0,
                        resp.error(commands.unknown_command_error(args)))
            if st is not None:
                st.command_failed()
            return
        route = worker.route_for(spec)
        self.last_cmd = spec.name
        if not commands.check_arity(spec, len(args)):
            self.answer(route.stat, args, t0, resp.error(commands.arity_error(spec)))
            if st is not None:
                st.command_failed()
            return
        if not self.authenticated and spec.name not in answers.BEFORE_AUTH:
            self.answer(route.stat, args, t0, _NOAUTH)
            return
        if self.buckets:
            refusal = worker.limits.over_rate(self.buckets, self.user.name)
            if refusal is not None:
                self.answer(route.stat, args, t0, refusal)
                return
        if self.acl is not None:  # a restricted user (acl.py): the command, its keys, its channels
            refusal = self.acl.refusal(spec, args)
            if refusal is not None:
                self.answer(route.stat, args, t0, refusal)
                if st is not None:
                    st.command_failed()
                return
        if worker.monitoring:  # every request comes here while a monitor is attached (monitor.py)
            refusal = worker.monitor.feed(self, spec, args)
            if refusal is not None:
                self.answer(route.stat, args, t0, refusal)
                return
        if st is not None:
            if st.txn is not None and st.txn.multi and spec.name not in transactions.NOT_QUEUED:
                transactions.queue(self, spec, route.stat, args, raw, t0)
                return
            if st.subs is not None and self.protocol == 2 and spec.name not in pubsub.ALLOWED_RESP2 \
                    and st.subs.count():
                self.answer(route.stat, args, t0, pubsub.not_allowed(spec))
                return
        kind = spec.kind
        if kind is Kind.KEYED or kind is Kind.SAME_SLOT or kind is Kind.BLOCKING:
            try:
                keys = commands.key_indexes(spec, args)
            except commands.CommandError as exc:
                self.answer(route.stat, args, t0, resp.error(str(exc)))
                return
            if not keys:
                refusal = answers.keyless(spec, args)
                if refusal is not None:
                    self.answer(route.stat, args, t0, refusal)
                    return
                target = self.router.any_backend()
            else:
                slot = key_slot(args[keys[0]])
                for i in keys[1:]:
                    if key_slot(args[i]) != slot:
                        self.answer(route.stat, args, t0, _CROSSSLOT)
                        return
                refusal = answers.keyed_option(spec, args)
                if refusal is not None:
                    self.answer(route.stat, args, t0, refusal)
                    return
                if kind is Kind.BLOCKING and blocking.blocks(spec, args):
                    blocking.start(self, spec, route.stat, args, raw, t0, slot, [args[i] for i in keys])
                    return
                target = self.router.slot_backend[slot]
            r = Reply(self, t0, route.stat, args)
            self.fifo.append(r)
            target.send(r, raw)
            if route.fast:
                worker.learn_route(args[0], route)
        elif kind is Kind.MULTI:
            multikey.dispatch(self, spec, route.stat, args, raw, t0)
        elif kind is Kind.PROXY:
            handler = answers.HANDLERS.get(spec.name)
            if handler is None:
                if spec.name in commands.FORWARD_ANY:
                    r = Reply(self, t0, route.stat, args)
                    self.fifo.append(r)
                    self.router.any_backend().send(r, raw)
                    return
                self.answer(route.stat, args, t0,
                            resp.error(f"ERR {spec.display_name} is not supported by kvstore-proxy"))
                return
            out = handler(self, args, route.stat, t0)
            if out is not None:
                self.answer(route.stat, args, t0, out)
        elif kind is Kind.TRANSACTION:
            transactions.handle(self, spec, route.stat, args, raw, t0)
        elif kind is Kind.PUBSUB:
            pubsub.handle(self, spec, route.stat, args, raw, t0)
        else:
            self.answer(route.stat, args, t0, resp.error("ERR " + spec.reason))

    def answer(self, stat: Any, args: list[bytes], t0: float, data: bytes) -> Reply:
        """Queue a reply the proxy knows already (it still waits for earlier replies)."""
        r = Reply(self, t0, stat, args)
        r.data = data
        self.fifo.append(r)
        return r

    def quit_after(self, r: Reply) -> None:
        """Close the connection once ``r`` is written (QUIT)."""
        self._closing = True
        self._close_after = r

    def login(self, perms: Any) -> bytes | None:
        """AUTH succeeded as ``perms``'s user: the error if its connection limit refuses it, else None."""
        limits = self.worker.limits
        if not (self.authenticated and self.user.name == perms.name):
            refusal = limits.login(perms.name, perms.max_connections)
            if refusal is not None:
                return refusal
            if self.authenticated:
                limits.logout(self.user.name)
        self.authenticated = True
        self.set_user(perms)
        return None

    def logout(self) -> None:
        """RESET: back to the default user, authenticated only if it needs no password."""
        limits = self.worker.limits
        if self.authenticated:
            limits.logout(self.user.name)
        default = self.worker.users.default
        self.authenticated = default.nopass and default.enabled
        if self.authenticated:
            limits.login(default.name, None)
        self.set_user(default)

    def set_user(self, perms: Any) -> None:
        """This session's user (login, RESET, a change of its rules): its checks, rates and routes."""
        self.user = perms
        self.acl = perms if perms.restricted else None
        self.buckets = self.worker.limits.buckets(self.addr, perms.name, perms.max_rps)
        self.refresh_routes()

    def refresh_routes(self) -> None:
        """The fast path only for an authenticated client whose state does not need every request;
        its user's routes (acl.UserDirectory.routes_for): every command, those it may run, or none."""
        st = self.state
        if self.authenticated and (st is None or not st.slow) and not self.buckets:
            self.routes = self.worker.users.routes_for(self.user)
        else:
            self.routes = {}

    def set_protocol(self, version: int) -> None:
        """Switch to RESP2 or RESP3 (HELLO, RESET): decided here once, never tested per request.

        Backend replies are forwarded raw, so a RESP3 session must get them from connections
        speaking RESP3: it routes with the worker's :class:`~kvstore_proxy.router3.Resp3Router`.
        Replies already in flight were asked for in the old protocol and arrive in it, as
        they would from Redis.
        """
        self.protocol = version
        self.enc = resp.PROTOCOLS[version]
        self.router = self.worker.router3 if version == 3 else self.worker.router  # type: ignore[assignment]
        if self.state is not None:
            self.refresh_routes()  # a RESP2 subscriber is restricted, a RESP3 one is not

    # --- replies --------------------------------------------------------------------------------

    def deliver(self, r: Reply) -> bool:
        """Write ``r``, the finished and only entry of the FIFO, at once (what ``flush`` would do
        at the end of the loop iteration, without the round trip through the Outbox: a client
        that waits for each reply before its next request gets nothing else to coalesce).
        False, doing nothing, when this connection needs ``flush``'s care."""
        transport = self.transport
        if transport is None or self._close_after is not None or self._paused_pending:
            return False
        self.fifo.popleft()
        d = r.data
        transport.write(d)  # type: ignore[arg-type]
        st = r.stat
        st.calls += 1
        dt = time.monotonic() - r.t0
        st.usec += dt
        if d[0] == 45:  # type: ignore[index]  # '-'
            st.errors += 1
            self.worker.stats.count_error(d)  # type: ignore[arg-type]
        if dt > self.worker.slow_threshold:
            self.worker.slowlog.add(r, dt, self)
        return True

    def flush(self) -> None:
        """Write every finished reply at the head of the FIFO, in request order."""
        self.dirty = False
        transport = self.transport
        fifo = self.fifo
        if transport is None:
            fifo.clear()
            return
        out = []
        now = time.monotonic()
        slow = self.worker.slow_threshold
        close_after = self._close_after
        closing = False
        while fifo:
            r = fifo[0]
            d = r.data
            if d is None:
                break
            fifo.popleft()
            out.append(d)
            st = r.stat
            st.calls += 1
            dt = now - r.t0
            st.usec += dt
            if d[0] == 45:  # '-'
                st.errors += 1
                self.worker.stats.count_error(d)
            if dt > slow:
                self.worker.slowlog.add(r, dt, self)
            if r is close_after:
                closing = True
                break
        if out:
            transport.write(b"".join(out) if len(out) > 1 else out[0])
        if closing:
            fifo.clear()
            transport.close()
            return
        if self._paused_pending and len(fifo) < _MAX_PENDING // 2:
            self._paused_pending = False
            if not self._paused_writing and not self._closing:
                transport.resume_reading()

    def describe(self, now: float | None = None) -> bytes:
        """One CLIENT LIST line for this connection."""
        mono = time.monotonic()
        age = int(time.time() - self.created)
        idle = int(mono - self.last_active)
        flags, sub, psub, ssub, multi = "N", 0, 0, 0, -1
        st = self.state
        if st is not None:
            flags = ""
            if st.block is not None:
                flags += "b"
            if st.subs is not None:
                sub, psub, ssub = (len(names) for names in st.subs.names)
                flags += "P" if sub + psub + ssub else ""
            if st.txn is not None and st.txn.multi:
                flags += "x"
                multi = len(st.txn.queued)
            flags = flags or "N"
        return (
            f"id={self.id} addr={self.addr} laddr={self.laddr} fd=-1 name={self.name.decode(errors='replace')} "
            f"age={age} idle={idle} flags={flags} db=0 sub={sub} psub={psub} ssub={ssub} multi={multi} qbuf=0 "
            f"qbuf-free=0 argv-mem=0 multi-mem=0 obl=0 oll={len(self.fifo)} omem=0 tot-mem=0 events=r "
            f"cmd={self.last_cmd.decode(errors='replace')} user={self.user.name} redir=-1 resp={self.protocol} "
            f"lib-name={self.lib_name.decode(errors='replace')} lib-ver={self.lib_ver.decode(errors='replace')}"
        ).encode()


def _protocol_message(exc: Exception) -> str:
    if isinstance(exc, TypeError):
        return "expected '$' (bulk strings only in a request)"
    text = str(exc) or type(exc).__name__
    if "multi" in text.lower() and "length" in text.lower():
        return "invalid multibulk length"
    if "bulk" in text.lower() and "length" in text.lower():
        return "invalid bulk length"
    return text


def _count(raw: bytes | bytearray) -> int | None:
    """Redis's strict integer parse of a length line (no sign, spaces or leading zeros)."""
    if raw.isdigit() and (raw[0] != 48 or len(raw) == 1):
        return int(raw)
    if raw[:1] == b"-" and raw[1:].isdigit():
        return -int(raw[1:])
    return None


def validate(buf: bytes | bytearray, p: int, n: int, left: int, max_bulk: int) -> tuple[int, int, str | None]:
    """Walk requests in ``buf[p:n]`` as Redis's parser would, without building them.

    ``left`` is the number of bulk strings still expected by a request begun before ``p`` (0 at a
    request boundary). Returns ``(position, left, problem)``: where it stopped for lack of data,
    and the Redis protocol error text if the bytes are not a valid request stream.
    """
    find = buf.find
    while p < n:
        if left <= 0:
            if buf[p] != 42:  # inline
                nl = find(b"\n", p)
                if nl < 0:
                    return p, 0, "too big inline request" if n - p > _INLINE_MAX else None
                p = nl + 1
                continue
            nl = find(b"\r\n", p)
            if nl < 0:
                return p, 0, "too big mbulk count string" if n - p > _INLINE_MAX else None
            count = _count(buf[p + 1 : nl])
            if count is None or count > _MAX_MULTIBULK:
                return p, 0, "invalid multibulk length"
            p = nl + 2
            left = max(count, 0)
            continue
        c = buf[p]
        if c != 36:
            return p, left, f"expected '$', got '{chr(c)}'"
        nl = find(b"\r\n", p)
        if nl < 0:
            return p, left, "too big bulk count string" if n - p > _INLINE_MAX else None
        size = _count(buf[p + 1 : nl])
        if size is None or size < 0 or size > max_bulk:
            return p, left, "invalid bulk length"
        end = nl + size + 4
        if end > n:
            return p, left, None
        p = end
        left -= 1
    return p, left, None
