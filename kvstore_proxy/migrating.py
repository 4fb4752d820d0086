"""Slots migrating A->B (docs/design.md, "Resharding"): MIGRATE the command's keys on A, then run the command on B.

A :class:`Migrating` stands in ``Router.slot_backend`` for every slot of one migration, so slots
that do not migrate cost nothing more than the table lookup they always cost. Its ``up`` is
False: the session's fast path then calls ``refuse(r)``, which lands here.

Per command::

    keys of the command ── MIGRATE B.host B.port "" 0 T KEYS k... ──► A (source backend FIFO)
        A replies +OK / +NOKEY ──► the command ──► B (target backend), reply to the client as usual
        A replies -ERR (BUSYKEY, IOERR...) ──► that error to the client; nothing ran on B

A's connection answers in order and each follow-up is sent to B from A's reply, so two
pipelined commands on one key reach B in the order the client sent them. A key never lives
in two places: it is on A until MIGRATE moves it, and once the proxy applied the mark it never
writes to A again.

Held slots: until the ``reshard`` znode says every proxy has the mark (phase ``moving`` or
``committed`` for exactly the migrations of the applied table), another proxy may still write
these slots on A, and a key moved now could be recreated there. So until then the entry answers
``-TRYAGAIN`` (the client retries), which lasts one barrier (milliseconds). This is the
"migration" protocol of kvstore_cluster/proxy_registration.py, which the proxy registers.
"""

from __future__ import annotations

from typing import Any

import hiredis
import structlog

from kvstore_cluster.model import Migration, ModelError
from kvstore_cluster.reshard_state import ReshardState
from kvstore_proxy import commands, resp
from kvstore_proxy.datapath import notify

log = structlog.get_logger("kvstore.proxy.migrating")

MIGRATE_TIMEOUT_MS = 5000
GONE_MAX = 100_000  # keys remembered per migration as already moved (beyond: forget, MIGRATE again)
_PING = resp.command([b"PING"])
HELD_ERROR = resp.error("TRYAGAIN slot is being prepared for migration; retry shortly")


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
        log.error("reshard_record_rejected", error=str(exc), action="holding the migrating slots (TRYAGAIN)")
        return False
    return state.keys_may_move(migrating)


class _ThenOnTarget:
    """Source FIFO entry of a MIGRATE: on success send the command to the target."""

    __slots__ = ("entry", "r", "raw", "keys", "t0")
    session = None  # the source backend must not notify anyone for this entry

    def __init__(self, entry: Migrating, r: Any, raw: bytes, keys: list[bytes]):
        self.entry = entry
        self.r = r
        self.raw = raw
        self.keys = keys
        self.t0 = r.t0

    def done(self, reply: bytes | bytearray) -> Any:
        entry = self.entry
        entry.inflight -= 1
        if reply[:1] == b"+":  # OK, NOKEY (the key was already gone from the source) or PONG
            entry.router.keys_migrated_on_access += len(self.keys)
            entry.remember(self.keys)
            entry.target.send(self.r, self.raw)
            return None
        text = bytes(reply[1:]).rstrip(b"\r\n").decode(errors="replace")
        return self.r.fail(resp.error(f"ERR kvstore could not move the key to its new group: {text}"))

    def fail(self, err: bytes) -> Any:
        self.entry.inflight -= 1
        return self.r.fail(err)


class Migrating:
    """The slot table entry of the slots of one migration (source -> target)."""

    __slots__ = ("source", "target", "router", "outbox", "prefix", "group", "gone", "inflight", "resp3")
    up = False

    def __init__(self, router: Any, source: Any, target: Any, twin_of: Migrating | None = None):
        self.router = router
        self.source = source  # MIGRATE's reply is +OK/+NOKEY in either protocol: one connection
        self.target = target
        self.outbox = router.outbox
        self.group = target.group
        # Keys this proxy saw leave the source (MIGRATE answered OK or NOKEY). Once every proxy
        # has the mark nobody writes the source again, so they can skip MIGRATE from then on.
        self.gone: set[bytes] = twin_of.gone if twin_of is not None else set()
        self.inflight = 0  # MIGRATEs sent whose command has not gone to the target yet
        # RESP3 sessions (router3.py) use the twin, whose commands go to the target's RESP3 connection.
        self.resp3: Migrating = self if twin_of is not None else Migrating(router, source, target.resp3, self)
        host = target.host.encode()
        self.prefix = [b"MIGRATE", host, str(target.port).encode(), b"", b"0", str(MIGRATE_TIMEOUT_MS).encode(),
                       b"KEYS"]

    def refuse(self, r: Any) -> None:
        # The fast path lands here (up is False); it did not keep the request bytes.
        self.send(r, resp.command(r.args))

    def send(self, r: Any, raw: bytes) -> None:
        if not self.router.migration_released:
            self.router.migration_tryagain += 1
            done = r.fail(HELD_ERROR)
            if done is not None:
                notify(done, self.outbox)
            return
        gone = self.gone
        keys = [k for k in _keys(r, raw) if k not in gone]
        # Straight to the target only when no earlier command of these slots still waits for its
        # MIGRATE: otherwise this one could overtake a pipelined command on the same key.
        if not keys and not self.inflight:
            self.target.send(r, raw)
            return
        self.inflight += 1
        if keys:
            self.router.migrations_on_access += 1
        # With nothing left to move, a PING keeps the command in line behind the earlier ones.
        self.source.send(_ThenOnTarget(self, r, raw, keys), resp.command([*self.prefix, *keys]) if keys else _PING)

    def remember(self, keys: list[bytes]) -> None:
        if len(self.gone) > GONE_MAX:
            self.gone.clear()
        self.gone.update(keys)


def _keys(r: Any, raw: bytes) -> list[bytes]:
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
