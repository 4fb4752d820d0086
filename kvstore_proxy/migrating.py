"""Slots migrating A->B (docs/design.md, "Resharding"): take the command's keys from A, then run the command on B.

A :class:`Migrating` stands in ``Router.slot_backend`` for every slot of one migration, so slots
that do not migrate cost nothing more than the table lookup they always cost. Its ``up`` is
False: the session's fast path then calls ``refuse(r)``, which lands here.

Per command::

    keys ── EVALSHA take (kvstore_cluster/keymove.py: MIGRATE to B unless big or locked) ──► A
        +OK ──► the command ──► B (target backend), reply to the client as usual
        -KVMOVING (a key is being moved in pieces) ──► held here, the take asked again shortly
        -ERR (BUSYKEY, IOERR...) ──► that error to the client; nothing ran on B

Order: a command on a key goes to B only after every earlier command on that key did (keys
with a take in flight are ``busy``: later commands on them follow through A with a PING, or
wait behind a held one). A key never lives in two places: it is on A until the take moves it,
and once the proxy applied the mark it never writes to A again.

Held requests (not answered -TRYAGAIN; bounded by :data:`HOLD_SECONDS` each and
:data:`HOLD_MAX_BYTES` per worker, past which they are): until the ``reshard`` znode says every
proxy has the mark (phase ``moving`` or ``committed`` for exactly the migrations of the applied
table), another proxy may still write these slots on A, and a key moved now could be recreated
there; that lasts one barrier (milliseconds). And while a big key is moved in pieces, its
requests wait for it. This is the "migration" protocol of kvstore_cluster/proxy_registration.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import hiredis
import structlog

from kvstore_cluster.keymove import MOVING_ERROR, TAKE, take_args
from kvstore_cluster.model import Migration, ModelError
from kvstore_cluster.reshard_state import ReshardState
from kvstore_proxy import commands, resp
from kvstore_proxy.datapath import notify

log = structlog.get_logger("kvstore.proxy.migrating")

MIGRATE_TIMEOUT_MS = 5000
GONE_MAX = 100_000  # keys remembered per migration as already moved (beyond: forget, take again)
HOLD_SECONDS = 2.0  # a held request is answered -TRYAGAIN after this (well within the backends' --timeout)
HOLD_MAX_BYTES = 64 << 20  # requests held per worker; beyond, -TRYAGAIN at once
RETRY_FIRST, RETRY_MAX = 0.002, 0.05  # seconds between takes of a key being moved in pieces
_PING = resp.command([b"PING"])
HELD_ERROR = resp.error("TRYAGAIN slot is being prepared for migration; retry shortly")
MOVING_TOO_LONG = resp.error("TRYAGAIN key is being moved to another group; retry shortly")
_MOVING = b"-" + MOVING_ERROR.encode()
_NOSCRIPT = b"-NOSCRIPT"


def released(reshard_data: bytes | None, migrating: tuple[Migration, ...]) -> bool:
    """May keys of the ``migrating`` slots (of the applied table) move now? (``ReshardState.keys_may_move``).

    Runs when the table or the reshard znode changes, never per request. A record that does not
    decode holds the slots (and is logged): moving keys on a guess could split a key in two.
    """
    if not migrating:
        return True
    if reshard_data is None:
        return True  # marks without a recorded reshard: nobody coordinates them, do not hold forever
    try:
        state = ReshardState.decode(reshard_data)
    except ModelError as exc:
        log.error("reshard_record_rejected", error=str(exc), action="holding the migrating slots")
        return False
    return state.keys_may_move(migrating)


class _ThenOnTarget:
    """Source FIFO entry of a take (or of a PING keeping order): on success send the command to the target."""

    __slots__ = ("entry", "r", "raw", "keys", "taken", "t0", "deadline")
    session = None  # the source backend must not notify anyone for this entry

    def __init__(self, entry: Migrating, r: Any, raw: bytes, keys: list[bytes], taken: list[bytes],
                 deadline: float | None):
        self.entry = entry
        self.r = r
        self.raw = raw
        self.keys = keys
        self.taken = taken
        self.t0 = time.monotonic()
        self.deadline = deadline  # of a request held before: it keeps its first deadline

    def done(self, reply: bytes | bytearray) -> Any:
        entry = self.entry
        entry.unbusy(self.keys)
        if reply[:1] == b"+":  # OK (moved, or nothing to move) or PONG
            entry.remember(self.taken)
            entry.router.keys_migrated_on_access += len(self.taken)
            entry.forward(self.r, self.raw, self.keys, self.deadline)
            return None
        if reply.startswith(_MOVING) or reply.startswith(_NOSCRIPT):
            if reply.startswith(_NOSCRIPT):
                entry.script_loaded = False
            entry.hold(self.r, self.raw, self.keys, block=True, deadline=self.deadline)
            return None
        text = bytes(reply[1:]).rstrip(b"\r\n").decode(errors="replace")
        return self.r.fail(resp.error(f"ERR kvstore could not move the key to its new group: {text}"))

    def fail(self, err: bytes) -> Any:
        self.entry.unbusy(self.keys)
        return self.r.fail(err)


class Held:
    """A request waiting in a slot entry: what it is, its keys, when it is answered -TRYAGAIN instead."""

    __slots__ = ("r", "raw", "keys", "deadline")

    def __init__(self, r: Any, raw: bytes, keys: list[bytes], deadline: float):
        self.r = r
        self.raw = raw
        self.keys = keys
        self.deadline = deadline


class Migrating:
    """The slot table entry of the slots of one migration (source -> target)."""

    __slots__ = ("source", "target", "router", "outbox", "group", "gone", "busy", "blocked", "waiting", "timer",
                 "delay", "resp3", "is_resp3", "host", "port", "script_loaded", "migration", "evicted",
                 "committed", "primary")
    up = False

    def __init__(self, router: Any, migration: Migration, source: Any, target: Any,
                 twin_of: Migrating | None = None):
        self.router = router
        self.migration = migration
        self.source = source  # the take's reply is +OK / -ERR in either protocol: one connection
        self.target = target
        self.outbox = router.outbox
        self.group = target.group
        # Keys this proxy saw leave the source (the take answered OK). Once every proxy has the
        # mark nobody writes the source again, so they can skip the take from then on.
        self.gone: set[bytes] = twin_of.gone if twin_of is not None else set()
        self.busy: dict[bytes, int] = {}  # key -> takes (or PINGs) in flight for it
        self.blocked: set[bytes] = set()  # keys whose requests wait behind a held one
        self.waiting: deque[Held] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.delay = RETRY_FIRST
        self.host, self.port = target.host.encode(), str(target.port).encode()
        self.script_loaded = True  # until a NOSCRIPT says otherwise: then one EVAL loads it
        self.evicted = False
        self.committed = False  # the slots are the target's now; kept only while takes are in flight
        # RESP3 sessions (resp3_router.py) use the twin, whose commands go to the target's RESP3 connection.
        self.is_resp3 = twin_of is not None
        self.primary: Migrating = twin_of if twin_of is not None else self  # the one in the router's table
        self.resp3: Migrating = self if twin_of is not None else Migrating(router, migration, source, target.resp3,
                                                                            self)

    def same(self, migration: Migration, source: Any, target: Any) -> bool:
        """Does this entry stand for ``migration`` between these very backends? (kept across table changes)."""
        return self.migration == migration and self.source is source and self.target is target

    # --- the request path -----------------------------------------------------------------------------

    def refuse(self, r: Any) -> None:
        # The fast path lands here (up is False); it did not keep the request bytes.
        self.send(r, resp.command(r.args))

    def send(self, r: Any, raw: bytes) -> None:
        keys = request_keys(r, raw)
        if not self.router.migration_released and not self.committed:
            self.hold(r, raw, keys)
            return
        self.dispatch(r, raw, keys)

    def dispatch(self, r: Any, raw: bytes, keys: list[bytes], deadline: float | None = None) -> None:
        if self.evicted:
            redispatch(self.router, [Held(r, raw, keys, 0.0)], self.is_resp3)
            return
        if self.blocked and not self.blocked.isdisjoint(keys):
            self.hold(r, raw, keys, deadline=deadline)  # behind an earlier request on one of its keys
            return
        gone, busy = self.gone, self.busy
        taken = [] if self.committed else [k for k in keys if k not in gone]
        if not taken and (not busy or busy.keys().isdisjoint(keys)):
            self.target.send(r, raw)
            return
        for k in keys:
            busy[k] = busy.get(k, 0) + 1
        if not taken:
            command = _PING  # nothing to move: keeps the command in line behind the earlier ones
        elif self.script_loaded:
            self.router.migrations_on_access += 1
            command = resp.command([b"EVALSHA", *_args(taken, self.host, self.port)])
        else:
            self.script_loaded = True
            self.router.migrations_on_access += 1
            command = resp.command([b"EVAL", TAKE, *_args(taken, self.host, self.port)[1:]])
        self.source.send(_ThenOnTarget(self, r, raw, keys, taken, deadline), command)

    def forward(self, r: Any, raw: bytes, keys: list[bytes], deadline: float | None = None) -> None:
        """The keys are off the source: to the target, unless an earlier request on them is held."""
        if self.blocked and not self.blocked.isdisjoint(keys):
            self.hold(r, raw, keys, deadline=deadline)
        else:
            self.target.send(r, raw)

    def unbusy(self, keys: list[bytes]) -> None:
        busy = self.busy
        for k in keys:
            n = busy.get(k, 0) - 1
            if n > 0:
                busy[k] = n
            else:
                busy.pop(k, None)
        if self.committed and not busy:
            p = self.primary
            if not p.busy and not p.resp3.busy and not p.waiting and not p.resp3.waiting:
                self.router.entry_drained(p)

    def remember(self, keys: list[bytes]) -> None:
        if len(self.gone) > GONE_MAX:
            self.gone.clear()
        self.gone.update(keys)

    # --- holding --------------------------------------------------------------------------------------

    def hold(self, r: Any, raw: bytes, keys: list[bytes], block: bool = False, deadline: float | None = None) -> None:
        """Keep the request until the slots are released or its keys are off the source (bounded)."""
        router = self.router
        if self.evicted:  # a take answered after this entry left the table: where the slot is now
            redispatch(router, [Held(r, raw, keys, 0.0)], self.is_resp3)
            return
        if router.held_bytes + len(raw) > HOLD_MAX_BYTES:
            self._answer(r, HELD_ERROR)
            return
        router.held_bytes += len(raw)
        router.requests_held += 1
        self.waiting.append(Held(r, raw, keys, deadline or time.monotonic() + HOLD_SECONDS))
        if block or self.blocked:
            self.blocked.update(keys)
        if self.timer is None:
            self.delay = RETRY_FIRST
            self.timer = asyncio.get_running_loop().call_later(self.delay, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.router.migration_released or self.committed:
            self.resume()
        else:
            self._expire()
        if self.waiting and self.timer is None:
            self.delay = min(self.delay * 2, RETRY_MAX)
            self.timer = asyncio.get_running_loop().call_later(self.delay, self._tick)

    def _expire(self) -> None:
        now = time.monotonic()
        if self.waiting and self.waiting[0].deadline <= now:
            kept: deque[Held] = deque()
            for h in self.waiting:
                if h.deadline <= now:
                    self.router.held_bytes -= len(h.raw)
                    self._answer(h.r, HELD_ERROR if not self.blocked else MOVING_TOO_LONG)
                else:
                    kept.append(h)
            self.waiting = kept

    def resume(self) -> None:
        """Send the held requests again, in order (those held too long get -TRYAGAIN)."""
        self._expire()
        held, self.waiting = self.waiting, deque()
        self.blocked = set()
        for h in held:
            self.router.held_bytes -= len(h.raw)
            self.dispatch(h.r, h.raw, h.keys, h.deadline)
        if self.committed:
            self.unbusy([])  # nothing in flight any more: the slots go to their owner directly

    def evict(self) -> list[Held]:
        """This entry left the table: its held requests, for the new table to take (``router.py``)."""
        self.evicted = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        held = list(self.waiting)
        self.waiting.clear()
        self.blocked = set()
        for h in held:
            self.router.held_bytes -= len(h.raw)
        return held

    def _answer(self, r: Any, err: bytes) -> None:
        self.router.migration_tryagain += 1
        done = r.fail(err)
        if done is not None:
            notify(done, self.outbox)


def redispatch(router: Any, held: list[Held], resp3: bool) -> None:
    """Requests held by an entry that left the table go where their slot is served now."""
    for h in held:
        entry = router.slot_backend[router.slotter.key_slot(h.keys[0])] if h.keys else None
        if entry is not None and resp3:
            entry = getattr(entry, "resp3", None)
        if entry is None or getattr(entry, "evicted", False):
            done = h.r.fail(HELD_ERROR)
            if done is not None:
                notify(done, router.outbox)
        else:
            entry.send(h.r, h.raw)


def _args(keys: list[bytes], host: bytes, port: bytes) -> list[bytes]:
    return [a if isinstance(a, bytes) else str(a).encode()
            for a in take_args(keys, host.decode(), int(port), MIGRATE_TIMEOUT_MS)]


def request_keys(r: Any, raw: bytes) -> list[bytes]:
    """The keys of a request (a Reply knows its arguments; a split request's part only its bytes)."""
    args = getattr(r, "args", None)
    if args is None:  # a Part of a split request: only its own bytes say which keys it has
        reader = hiredis.Reader()
        reader.feed(raw)
        args = reader.gets()
    spec = commands.lookup(args)
    if spec is None:
        return []
    try:
        # MGET k k: MIGRATE given a key twice restores it twice and fails with BUSYKEY.
        return list(dict.fromkeys(args[i] for i in commands.key_indexes(spec, args)))
    except commands.CommandError:
        return []
