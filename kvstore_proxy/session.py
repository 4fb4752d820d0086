"""A client connection: the per-request path is compiled (datapath.SessionCore); this is the rest.

::

    client bytes
      │ SessionCore.data_received (datapath.pyx): multibulk parsed in place, Redis's limits
      ▼
    route: routes[name] ──fast Route──► slot_backend[slot] (one key), or split by group (MGET MSET DEL...)
      │      (after HELLO 3: each entry's RESP3 twin)                                (datapath.pyx)
      │      └─ otherwise _slow (here): commands.lookup ─► arity ─► auth ─► client state ─► kind
      │             MULTI ─► SessionCore.split_request (compiled, as the fast path)
      │             KEYED / SAME_SLOT / BLOCKING ─► -CROSSSLOT, a lease (blocking.py) or the slot's backend
      │             PROXY ─► answers.HANDLERS: answered here or fanned out          (answers.py, fanout.py)
      │             TRANSACTION, PUBSUB ─► transactions.py, pubsub.py (leased connections: leases.py)
      │             REFUSED ─► one error naming the command
      │      inline commands (telnet) ─► _inline ─► _slow
      ▼
    Reply appended to this session's Fifo *before* it is sent
      ▼
    Backend: request bytes to its write buffer; Outbox writes once per loop iteration
      ▼
    BackendCore.data_received: reply bounds, in C ─► the Reply next in line goes straight to the
      client's output buffer (written at once when nothing else is pending); SessionCore.flush
      writes the rest in order at the end of the iteration; stats, slowlog
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from kvstore_proxy import answers, blocking, clientcmd, commands, pubsub, resp, scripting, transactions
from kvstore_proxy.clientstate import ClientState
from kvstore_proxy.commands import Kind
from kvstore_proxy.datapath import Reply, SessionCore
from kvstore_proxy.sockets import set_nodelay

if TYPE_CHECKING:
    from kvstore_proxy.server import Worker

log = structlog.get_logger("kvstore.proxy.session")

_NOAUTH = resp.error("NOAUTH Authentication required.")
_CROSSSLOT = resp.error("CROSSSLOT Keys in request don't hash to the same slot")


class Session(SessionCore, asyncio.Protocol):
    """One client connection (an ``asyncio.Protocol``: no task per request, ever).

    SessionCore holds what the compiled path uses (``fifo``, ``routes``, ``transport``, ``resp3``,
    ``dirty``, the closing/pausing flags, ``last_active``); the rest is here. A new attribute must
    be added to ``__slots__``.
    """

    __slots__ = ('router', 'id', 'addr', 'laddr', 'name', 'protocol', 'enc', 'lib_name', 'lib_ver',
                 'created', 'last_cmd', 'authenticated', 'state', 'user', 'acl', 'buckets', 'reply_mode')

    def __init__(self, worker: Worker):
        SessionCore.__init__(self, worker)
        self.router = worker.router
        self.id = 0
        self.addr = "?"
        self.laddr = "?"
        self.name = b""
        self.protocol = 2
        self.enc: resp.Resp2 = resp.RESP2  # how proxy-built replies are encoded (set_protocol)
        self.lib_name = b""
        self.lib_ver = b""
        self.created = time.time()
        self.last_cmd = b"NULL"
        # The user (acl.Permissions); ``acl`` is the same object when it restricts anything, else
        # None; ``buckets`` are the request rates it draws from (limits.py), empty for most.
        self.user = worker.users.default
        self.acl = None
        self.buckets: tuple[Any, ...] = ()
        self.authenticated = self.user.nopass and self.user.enabled
        self.routes = worker.routes if self.authenticated else {}
        # Transaction, held requests, blocked command, subscriptions (clientstate.py); None for
        # the plain clients that use none of them.
        self.state: ClientState | None = None
        self.reply_mode: str | None = None  # CLIENT REPLY OFF/SKIP (clientcmd.py); None: replies are sent

    # --- connection -----------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport
        self.transport = transport
        set_nodelay(transport)
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
        self.fifo.clear()

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

    def _inline(self, line: bytes, t0: float) -> None:
        """An inline command line (without its newline), as telnet users type them."""
        args = resp.split_inline(line)
        if args:
            self._slow(args, resp.command(args), t0)

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
        if self.reply_mode is not None and not clientcmd.answered_anyway(args):
            clientcmd.silently(self, args, raw, t0)
            return
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
                target = self.router.slot_backend[worker.keyless_slot]  # option keyless-tag
            else:
                key_slot = worker.router.slotter.key_slot
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
            if spec.name in scripting.EVAL or spec.name in scripting.EVALSHA:
                scripting.forward(self, spec.name, target, r, raw, args)
            else:
                target.send(r, raw)
            if route.fast:
                worker.learn_route(args[0], route)
        elif kind is Kind.MULTI:
            self.split_request(route, raw, t0)
            worker.learn_route(args[0], route)
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
        if self.authenticated and (st is None or not st.slow) and not self.buckets and self.reply_mode is None:
            self.routes = self.worker.users.routes_for(self.user)
        else:
            self.routes = {}

    def set_protocol(self, version: int) -> None:
        """Switch to RESP2 or RESP3 (HELLO, RESET): decided here once, never tested per request.

        Backend replies are forwarded raw, so a RESP3 session must get them from connections
        speaking RESP3: it routes with the worker's :class:`~kvstore_proxy.resp3_router.Resp3Router`.
        Replies already in flight were asked for in the old protocol and arrive in it, as
        they would from Redis.
        """
        self.protocol = version
        self.enc = resp.PROTOCOLS[version]
        self.router = self.worker.router3 if version == 3 else self.worker.router  # type: ignore[assignment]
        self.resp3 = version == 3
        if self.state is not None:
            self.refresh_routes()  # a RESP2 subscriber is restricted, a RESP3 one is not

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
