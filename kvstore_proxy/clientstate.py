"""A client's state beyond plain requests: held requests, its transaction, its blocked command, its subscriptions.

A session gets a :class:`ClientState` (``session.state``) when it first sends MULTI, WATCH, a
blocking command or a subscription, and loses it when all of that is over; sessions that never
do any of it keep ``state = None`` and pay nothing. While the state needs to see every request
(a transaction being queued, requests held behind a lease, a RESP2 subscriber), the session's
``routes`` is empty, so every request takes ``Session._slow``.

Holding: a request served on a lease (WATCH, EXEC, a blocking command) must run after the
client's earlier requests and before its later ones, as on one Redis connection. Earlier ones:
:func:`prepare` sends a ``PING`` through the shared connection they took and waits for its
reply first (when any is still unanswered). Later ones: the session is *held* and keeps them in
``stash`` until the lease replies, then replays them in order.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvstore_proxy import resp
from kvstore_proxy.backend import Backend
from kvstore_proxy.migrating import Migrating
from kvstore_proxy.rulehold import RuleHub, unhub

if TYPE_CHECKING:
    from kvstore_proxy.session import Session

STASH_PAUSE = 10_000  # requests held before the client's socket stops being read
_PING = resp.command([b"PING"])


class ClientState:
    """Everything stateful about one client; created on demand, dropped by :meth:`settle`."""

    __slots__ = ("session", "hub", "held", "stash", "txn", "block", "subs", "leases", "_paused")

    def __init__(self, session: Session):
        self.session = session
        self.hub = session.worker.stateful
        self.held = False
        self.stash: deque[tuple[list[bytes], bytes, float]] = deque()
        self.txn: Any = None  # transactions.Transaction
        self.block: Any = None  # blocking.Blocked
        self.subs: Any = None  # pubsub.Subscriptions
        self.leases = 0  # leases held, for --max-leases-per-client
        self._paused = False

    @property
    def slow(self) -> bool:
        """Must every request of this session go through ``_slow``?"""
        return (self.held or (self.txn is not None and self.txn.multi)
                or (self.subs is not None and self.session.protocol == 2 and self.subs.count() > 0))

    # --- holding --------------------------------------------------------------------------------

    def hold(self) -> None:
        self.held = True
        self.session.refresh_routes()

    def keep(self, args: list[bytes], raw: bytes, t0: float) -> None:
        """A request that arrived while held: replayed by :meth:`release`."""
        self.stash.append((args, raw, t0))
        s = self.session
        if len(self.stash) > STASH_PAUSE and not self._paused and s.transport is not None:
            self._paused = True
            s.transport.pause_reading()

    def release(self) -> None:
        """The lease answered: replay the held requests in order, until one holds the session again."""
        self.held = False
        s = self.session
        s.refresh_routes()
        stash = self.stash
        while stash and not self.held and not s._closing and s.transport is not None:
            args, raw, t0 = stash.popleft()
            s._slow(args, raw, t0)
        if self._paused and not self.held:
            self._paused = False
            if s.transport is not None and not (s._closing or s._paused_pending or s._paused_writing):
                s.transport.resume_reading()
        notify(s)
        self.settle()

    # --- lifecycle ------------------------------------------------------------------------------

    def command_failed(self) -> None:
        """An unknown command or a wrong arity: inside MULTI it dooms the transaction (EXECABORT)."""
        if self.txn is not None and self.txn.multi:
            self.txn.dirty = True

    def settle(self) -> None:
        """Drop the state once nothing is left in it: the session is plain again."""
        s = self.session
        if (s.state is self and not self.held and not self.stash and self.txn is None and self.block is None
                and self.subs is None and self.leases == 0):
            s.state = None
        s.refresh_routes()

    def reset(self) -> None:
        """RESET: out of MULTI, no WATCH, no subscription (Redis's RESET)."""
        from kvstore_proxy import pubsub, transactions

        transactions.discard(self)
        pubsub.drop_all(self)
        self.settle()

    def disconnected(self) -> None:
        from kvstore_proxy import blocking, pubsub, transactions

        self.stash.clear()
        transactions.discard(self)
        blocking.client_gone(self)
        pubsub.drop_all(self)


def state_of(session: Session) -> ClientState:
    st = session.state
    if st is None:
        st = session.state = ClientState(session)
    return st


def notify(session: Session) -> None:
    """Have the session write its finished replies at the end of this loop iteration."""
    if not session.dirty and session.fifo and session.fifo[0].data is not None:
        session.dirty = True
        outbox = session.outbox
        outbox.sessions.append(session)
        outbox.schedule()


def finish(r: Any, data: bytes) -> None:
    """Fill a reply the session waits for and have it written."""
    if r.data is None:
        r.data = data
    notify(r.session)


class Step:
    """A request the proxy sends for itself on a shared backend (a FIFO entry like a Part)."""

    __slots__ = ("t0", "args", "on_done", "on_fail")
    session = None  # nobody's reply: the backend notifies no client for it

    def __init__(self, on_done: Callable[[bytes], Any], on_fail: Callable[[bytes], Any] | None = None,
                 args: list[bytes] | None = None):
        self.t0 = time.monotonic()
        self.args = args
        self.on_done = on_done
        self.on_fail = on_fail or on_done

    def done(self, raw: bytes | bytearray) -> None:
        self.on_done(bytes(raw))

    def fail(self, err: bytes) -> None:
        self.on_fail(err)


def unanswered(session: Session, own: Any = None) -> bool:
    """Has the session a request, other than ``own``, still waiting for its reply?"""
    return any(r.data is None and r is not own for r in session.fifo)


def prepare(session: Session, entry: Any, keys: list[bytes], own: Any,
            then: Callable[[Backend], None], fail: Callable[[bytes], None]) -> None:
    """Get ``entry`` (a slot's entry in the session's routing table) ready for a lease, then ``then(master)``.

    - a :class:`Backend`: when the session still waits for earlier replies, a PING through it
      first, so that they ran before what the lease will send;
    - a :class:`Migrating` slot: ``keys`` are moved to the target first (MIGRATE, as for any
      request of the slot), with an EXISTS on the target that also orders the session's earlier
      requests; then the target's master;
    - a slot whose keys a key rule change moves (:class:`RuleHub`): the slot's own entry if none
      of ``keys`` moves, else (no keys given: may move) ``fail(-TRYAGAIN)``;
    - anything else (fenced, unowned, group down, slot held for migration): ``fail(error)``.
    """
    if isinstance(entry, RuleHub):
        entry = entry.settle(keys) if keys else entry
    if isinstance(entry, Migrating):
        target = entry.target
        args = [b"EXISTS", *keys] if keys else [b"PING"]
        entry.send(Step(lambda raw: _then_or_fail(raw, target, then, fail), fail, args), resp.command(args))
    elif isinstance(entry, Backend):
        if not entry.up:
            fail(entry.error)
        elif unanswered(session, own):
            entry.send(Step(lambda raw: then(entry), lambda err: then(entry)), _PING)
        else:
            then(entry)
    else:
        fail(getattr(entry, "error", resp.error("CLUSTERDOWN Hash slot not served")))


def _then_or_fail(raw: bytes, target: Backend, then: Callable[[Backend], None],
                  fail: Callable[[bytes], None]) -> None:
    if raw[:1] in (b"-", b"!"):
        fail(raw if raw[:1] == b"-" else resp.error("ERR " + raw.decode(errors="replace")))
    else:
        then(target)


def serving(router: Any, slot: int) -> str | None:
    """The master a lease for ``slot`` belongs on now (None: nobody may serve it right now).

    A migrating slot belongs on its source until every proxy has the mark, then on its target.
    """
    entry = unhub(router.slot_backend[slot])
    if isinstance(entry, Migrating):
        entry = entry.target if router.migration_released else entry.source
    return entry.address if isinstance(entry, Backend) else None
