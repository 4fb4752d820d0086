"""MONITOR: every command the proxy receives, from every worker, streamed in Redis's format.

The switch is worker-wide and costs nothing while nobody monitors::

    MONITOR ─► Hub.attach ─► Worker.set_monitoring(True): the shared ``routes`` dict is emptied in
      │        place, so every session's requests take Session._slow, which calls Hub.feed
      │        └─ links to the sibling workers (siblings.py): each switches on too and streams its
      │           lines back; the client's +OK waits until every sibling confirmed
      ▼
    Hub.feed ─► line() ─► buffered, written once per loop iteration to the local monitors and to
      │         the siblings subscribed to this worker; lines from siblings go to local monitors only
      ▼
    a monitor whose unread output passes --monitor-output-limit is disconnected (Redis does the
    same to a slow monitor); the last monitor to leave, here and in every sibling, switches back

Redis's rules: commands flagged ``admin`` are not shown, nor commands refused before running
(unknown, wrong arity, NOAUTH); AUTH's and HELLO AUTH's credentials show as ``(redacted)``; a
monitor may not run commands that read or write keys.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from kvstore_proxy import resp
from kvstore_proxy.commands import CommandSpec
from kvstore_proxy.inspection import complete

if TYPE_CHECKING:
    from kvstore_proxy.datapath import Reply
    from kvstore_proxy.server import Worker
    from kvstore_proxy.session import Session

log = structlog.get_logger("kvstore.proxy.monitor")

LINK_TIMEOUT = 1.0  # seconds a sibling has to confirm a monitor link before MONITOR answers anyway
_REPLICA_REFUSAL = resp.error("ERR Replica can't interact with the keyspace")

# sdscatrepr: printable ASCII as is, a few escapes, \xNN for the rest.
_ESCAPES = {ord("\\"): b"\\\\", ord('"'): b'\\"', ord("\n"): b"\\n", ord("\r"): b"\\r", ord("\t"): b"\\t",
            7: b"\\a", 8: b"\\b"}
_REPR = [_ESCAPES.get(c, bytes([c]) if 0x20 <= c < 0x7F else b"\\x%02x" % c) for c in range(256)]
_PLAIN = bytes(c for c in range(0x20, 0x7F) if c not in (ord("\\"), ord('"')))
_REDACTED = b'"(redacted)"'


def quote(arg: bytes) -> bytes:
    """One argument as Redis's sdscatrepr writes it: ``"k\\"1"``, ``"a\\r\\nb\\x00\\xff"``."""
    if not arg.translate(None, _PLAIN):
        return b'"' + arg + b'"'
    return b'"' + b"".join([_REPR[c] for c in arg]) + b'"'


def redacted(args: list[bytes]) -> set[int]:
    """Positions of credentials: every argument of AUTH, the pair after each AUTH option of HELLO.

    Redis 7.0 leaves a few malformed forms unredacted (``AUTH a b c``, HELLO with a bad version,
    a second HELLO AUTH after a failed first); the proxy hides those too.
    """
    name = args[0].lower()
    if name == b"auth":
        return set(range(1, len(args)))
    if name != b"hello":
        return set()
    hidden: set[int] = set()
    i = 2
    while i < len(args):
        opt = args[i].lower()
        more = len(args) - 1 - i
        if opt == b"auth" and more >= 2:
            hidden.update((i + 1, i + 2))
            i += 3
        elif opt == b"setname" and more >= 1:
            i += 2
        else:
            break
    return hidden


def line(now: float, addr: str, args: list[bytes]) -> bytes:
    """One MONITOR line: ``+1339518083.107412 [0 127.0.0.1:60866] "keys" "*"`` and CRLF."""
    secret = redacted(args)
    sec = int(now)
    head = b"+%d.%06d [0 %s] " % (sec, int((now - sec) * 1e6), addr.encode())
    shown = [_REDACTED if i in secret else quote(a) for i, a in enumerate(args)]
    return head + b" ".join(shown) + b"\r\n"


class _Client:
    """A session in MONITOR mode; its lines wait in ``backlog`` until its +OK is written."""

    __slots__ = ("session", "reply", "backlog", "backlog_size")

    def __init__(self, session: Session, reply: Reply):
        self.session = session
        self.reply = reply
        self.backlog: list[bytes] | None = []
        self.backlog_size = 0


class _Link(asyncio.Protocol):
    """This worker's subscription to one sibling's lines."""

    def __init__(self, hub: Hub, index: int):
        self.hub = hub
        self.index = index
        self.transport: Any = None
        self.confirmed: asyncio.Future[bool] = hub.loop.create_future()
        self.carry = b""
        self.closing = False

    def __call__(self) -> _Link:
        """Its own protocol factory (create_unix_connection wants one)."""
        return self

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(b"monitor\n")

    def data_received(self, data: bytes) -> None:
        data = self.carry + data
        if not self.confirmed.done():
            if len(data) < 5:
                self.carry = data
                return
            if not data.startswith(b"+OK\r\n"):
                self.transport.abort()
                return
            self.confirmed.set_result(True)
            data = data[5:]
        end = data.rfind(b"\r\n") + 2  # lines never hold a raw CRLF: arguments are quoted
        self.carry = data[end:]
        if len(self.carry) > self.hub.output_limit:  # not MONITOR lines: not a sibling of ours
            self.transport.abort()
            return
        if end > 1:
            self.hub.deliver(data[:end])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.confirmed.done():
            self.confirmed.set_result(False)
        self.hub.link_lost(self, exc)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


class Hub:
    """This worker's monitors, its subscribers among the siblings, and its links to them."""

    def __init__(self, worker: Worker, output_limit: int):
        self.worker = worker
        self.loop = worker.loop
        self.family = worker.family
        self.output_limit = output_limit
        self.clients: dict[Session, _Client] = {}
        self.subscribers: set[Any] = set()  # transports of siblings that stream our lines
        self.links: dict[int, _Link] = {}
        self._out: list[bytes] = []
        self._scheduled = False
        self._linking: asyncio.Task[None] | None = None
        self._link_lock = asyncio.Lock()
        self._unreachable: set[int] = set()

    # --- this worker's monitors -------------------------------------------------------------------

    def attach(self, session: Session, reply: Reply) -> None:
        """``session`` sent MONITOR; ``reply`` (its +OK, unanswered yet) is completed once the
        siblings stream their lines here too."""
        if session in self.clients:
            self._answer(reply)
            return
        self.clients[session] = _Client(session, reply)
        self._switch()
        log.info("monitor_attached", client=session.id, addr=session.addr, monitors=len(self.clients))
        if not self.family.siblings():
            self._answer(reply)
            return
        task = self.loop.create_task(self._link_all())
        self.worker.tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(lambda t: self._linked(t, reply))

    def detach(self, session: Session) -> None:
        """``session`` left MONITOR mode (RESET) or closed."""
        client = self.clients.pop(session, None)
        if client is None:
            return
        log.info("monitor_detached", client=session.id, monitors=len(self.clients))
        if not self.clients:
            for link in list(self.links.values()):
                link.close()
            self.links.clear()
        self._switch()

    def _linked(self, task: asyncio.Task[None], reply: Reply) -> None:
        self.worker.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("monitor_link_failed", error=str(task.exception()))
        self._answer(reply)

    def _answer(self, reply: Reply) -> None:
        complete(reply, resp.OK)
        self.loop.call_soon(self._release, reply.session)

    def _release(self, session: Session) -> None:
        """Start writing to a monitor once its +OK left: the lines buffered meanwhile first."""
        client = self.clients.get(session)
        if client is None or client.backlog is None:
            return
        if client.reply in session.fifo:  # replies owed before MONITOR's are not written yet
            self.loop.call_later(0.005, self._release, session)
            return
        backlog, client.backlog = client.backlog, None
        if backlog:
            self._write(client, b"".join(backlog))

    # --- lines ------------------------------------------------------------------------------------

    def feed(self, session: Session, spec: CommandSpec, args: list[bytes]) -> bytes | None:
        """A command ``session`` sent passed lookup, arity and auth; an error reply if a monitor may
        not run it (then nobody sees it, as in Redis), else None after queueing its line."""
        flags = spec.flags
        if session in self.clients and ("write" in flags or "readonly" in flags):
            return _REPLICA_REFUSAL
        if "admin" in flags:
            return None
        self._out.append(line(time.time(), session.addr, args))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._flush)
        return None

    def _flush(self) -> None:
        self._scheduled = False
        if not self._out:
            return
        data = b"".join(self._out)
        self._out = []
        for transport in list(self.subscribers):
            transport.write(data)
            if transport.get_write_buffer_size() > self.output_limit:
                log.warning("monitor_sibling_cut_off", buffered=transport.get_write_buffer_size())
                transport.abort()
        self.deliver(data)

    def deliver(self, data: bytes) -> None:
        """Write complete lines to every monitor of this worker."""
        for client in list(self.clients.values()):
            self._write(client, data)

    def _write(self, client: _Client, data: bytes) -> None:
        session = client.session
        transport = session.transport
        if transport is None:
            return
        if client.backlog is not None:
            client.backlog.append(data)
            client.backlog_size += len(data)
            buffered = client.backlog_size
        else:
            transport.write(data)
            buffered = transport.get_write_buffer_size()
        if buffered > self.output_limit:
            # A monitor that does not keep up is cut off, never waited for (Redis does the same).
            log.warning("monitor_cut_off", client=session.id, addr=session.addr, buffered=buffered,
                        limit=self.output_limit)
            self.detach(session)
            transport.abort()

    # --- siblings ---------------------------------------------------------------------------------

    def subscribe(self, transport: Any) -> Any:
        """A sibling wants our lines (siblings.py's ``monitor`` stream); returns its end callback."""
        self.subscribers.add(transport)
        transport.write(b"+OK\r\n")
        self._switch()

        def ended() -> None:
            self.subscribers.discard(transport)
            self._switch()

        return ended

    async def _link_all(self) -> None:
        """Subscribe to every sibling not linked yet; wait (bounded) until each link is confirmed.

        One at a time (the lock): two monitors attaching together must not link a sibling twice,
        which would show its commands twice.
        """
        async with self._link_lock:
            for index in self.family.siblings():
                if index in self.links or not self.clients:
                    continue
                link = _Link(self, index)
                try:
                    await asyncio.wait_for(
                        self.loop.create_unix_connection(link, self.family.path(index)), LINK_TIMEOUT)
                except (OSError, TimeoutError) as exc:
                    if index not in self._unreachable:  # relink retries every tick: say it once
                        self._unreachable.add(index)
                        log.info("monitor_sibling_unreachable", worker=index, error=str(exc) or type(exc).__name__)
                    continue
                self._unreachable.discard(index)
                if not self.clients:  # the last monitor left meanwhile
                    link.close()
                    continue
                self.links[index] = link
            pending = [link.confirmed for link in self.links.values() if not link.confirmed.done()]
            if pending:
                await asyncio.wait(pending, timeout=LINK_TIMEOUT)

    def relink(self) -> None:
        """While monitors are attached, link siblings that were not reachable (restarted, late)."""
        if self.clients and len(self.links) < len(self.family.siblings()) and (
                self._linking is None or self._linking.done()):
            self._linking = self.loop.create_task(self._link_all())

    def link_lost(self, link: _Link, exc: Exception | None) -> None:
        if self.links.get(link.index) is link:
            del self.links[link.index]
        if link.closing:
            return
        # The sibling died or cut us off: our monitors would silently miss its commands, so they
        # are disconnected, as a slow monitor is.
        log.warning("monitor_sibling_lost", worker=link.index, monitors=len(self.clients))
        for session in list(self.clients):
            self.detach(session)
            if session.transport is not None:
                session.transport.abort()

    def _switch(self) -> None:
        self.worker.set_monitoring(bool(self.clients or self.subscribers))

    def close(self) -> None:
        for link in list(self.links.values()):
            link.close()
        self.links.clear()
        for transport in list(self.subscribers):
            transport.close()
