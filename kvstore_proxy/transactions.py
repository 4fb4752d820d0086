"""MULTI, EXEC, DISCARD, WATCH, UNWATCH: queued by the proxy, run at EXEC as one MULTI ... EXEC on a lease.

::

    WATCH k..   ─► keys in one slot ─► lease to the slot's master ─► WATCH there (the lease is kept)
    MULTI       ─► +OK (nothing sent); the session takes the slow path
    cmd         ─► checked as Redis would (unknown, arity, keys) ─► +QUEUED, or an error that dooms EXEC
                   every key of the transaction, WATCHed keys too, in one slot, else -CROSSSLOT
    EXEC        ─► MULTI, the queued commands and EXEC, pipelined on the lease (the WATCH's, or a
                   fresh one) ─► EXEC's reply forwarded as it is; the lease given back clean

Never on an old owner: a WATCH is *broken* when its slot's master changes in any way (marked for
migration and released, committed elsewhere, master replaced, proxy fenced) or its lease drops;
EXEC then answers nil, as when a watched key changed, and sends nothing. Without WATCH nothing is
on any master before EXEC, so EXEC runs where the slot is served at that moment (a migrating
slot's keys are moved to the target first, as for any request).

With the cluster option ``transactions per-group`` a transaction without WATCH may span groups:
each command's keys must share a slot (MSET, MGET, DEL, ... excepted: split by group as outside
MULTI), and EXEC runs one MULTI/EXEC per master, each atomic on its own, and merges the replies
in order (a group that failed answers its own commands with its error).

Requests the client sends after EXEC wait for its reply (the session is held), and EXEC waits
for the client's earlier requests to that master (``clientstate.prepare``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from kvstore_proxy import answers, commands, resp, scripting
from kvstore_proxy.backend import Backend
from kvstore_proxy.clientstate import ClientState, finish, prepare, serving, state_of
from kvstore_proxy.commands import CommandSpec, Kind, Merge
from kvstore_proxy.datapath import Reply
from kvstore_proxy.migrating import Migrating
from kvstore_proxy.rulehold import RuleHub

if TYPE_CHECKING:
    from kvstore_proxy.datapath import CommandStat
    from kvstore_proxy.leases import Lease
    from kvstore_proxy.session import Session

log = structlog.get_logger("kvstore.proxy.transactions")

# Executed at once even inside MULTI, as Redis does; everything else is queued.
NOT_QUEUED = frozenset({b"exec", b"discard", b"multi", b"watch", b"quit", b"reset"})
_KEYED_KINDS = (Kind.KEYED, Kind.SAME_SLOT, Kind.MULTI, Kind.BLOCKING)
_FORWARDED = frozenset({b"ping", b"echo", b"time", b"unwatch"})  # keyless, harmless on any master
QUEUED = b"+QUEUED\r\n"
EXECABORT = resp.error("EXECABORT Transaction discarded because of previous errors.")
RULES_CHANGED = resp.error("EXECABORT Transaction discarded because the cluster's key rules changed while it was "
                           "queued; retry it")
CROSSSLOT = resp.error("CROSSSLOT Keys in request don't hash to the same slot")
_EMPTY = b"*0\r\n"
_MULTI = resp.command([b"MULTI"])
_EXEC = resp.command([b"EXEC"])
_UNWATCH = resp.command([b"UNWATCH"])


class Watch:
    """A WATCH in effect on a master: the lease it was sent on, its slot, that master."""

    __slots__ = ("lease", "slot", "address", "slotter")

    def __init__(self, lease: Lease, slot: int, address: str, slotter: Any):
        self.lease = lease
        self.slot = slot
        self.address = address
        self.slotter = slotter  # the slot function the slot was computed with (key rules)


class Queued:
    """A command queued in MULTI: its bytes and slot (None: keyless); a multi-key command of the
    per-group option whose keys span slots (SPLIT) keeps its spec and arguments to be split at EXEC."""

    __slots__ = ("raw", "slot", "spec", "args")

    def __init__(self, raw: bytes, slot: int | None, spec: CommandSpec | None = None,
                 args: list[bytes] | None = None):
        self.raw = raw
        self.slot = slot
        self.spec = spec
        self.args = args


SPLIT = -1  # Queued.slot of a multi-key command split by group at EXEC (option per-group)


class Transaction:
    """One client's MULTI queue and WATCH."""

    __slots__ = ("multi", "queued", "dirty", "slot", "per_group", "watching", "watch_slot", "watch", "broken",
                 "slotter")

    def __init__(self) -> None:
        self.multi = False
        self.queued: list[Queued] = []
        self.dirty = False  # a command was refused while queued: EXEC answers EXECABORT
        self.slot: int | None = None  # the one slot of the transaction so far
        self.per_group = False  # the cluster option, as it was at MULTI
        self.watching = False  # a WATCH since the last EXEC/DISCARD/UNWATCH
        self.watch_slot: int | None = None
        self.watch: Watch | None = None  # None once broken (or before the first WATCH's reply)
        self.broken = False  # EXEC answers nil
        self.slotter: Any = None  # the slot function at MULTI: queued slots are only good under it


def handle(s: Session, spec: CommandSpec, stat: CommandStat, args: list[bytes], raw: bytes, t0: float) -> None:
    _HANDLERS[spec.name](s, spec, stat, args, raw, t0)


def _transaction(s: Session) -> tuple[ClientState, Transaction]:
    st = state_of(s)
    if st.txn is None:
        st.txn = Transaction()
    return st, st.txn


def _multi(s: Session, spec: CommandSpec, stat: CommandStat, args: list[bytes], raw: bytes, t0: float) -> None:
    st, txn = _transaction(s)
    if txn.multi:
        s.answer(stat, args, t0, resp.error("ERR MULTI calls can not be nested"))
        return
    txn.multi = True
    txn.queued = []
    txn.dirty = False
    txn.slot = txn.watch_slot
    txn.per_group = s.worker.options.transactions == "per-group" and not txn.watching
    txn.slotter = s.worker.router.slotter
    s.refresh_routes()
    s.answer(stat, args, t0, resp.OK)


def queue(s: Session, spec: CommandSpec, stat: CommandStat, args: list[bytes], raw: bytes, t0: float) -> None:
    """A command sent inside MULTI: +QUEUED, or the error Redis (Cluster) would give, dooming EXEC."""
    txn = s.state.txn  # type: ignore[union-attr]
    if txn.per_group and spec.kind is Kind.MULTI:
        # MSET, DEL, MGET, ... over several slots: split by group at EXEC, merged like outside MULTI.
        keys = commands.key_indexes(spec, args)  # fixed positions: arity was checked
        if len({txn.slotter.key_slot(args[i]) for i in keys}) > 1:
            txn.queued.append(Queued(raw, SPLIT, spec, args))
            s.answer(stat, args, t0, QUEUED)
            return
    slot, error = _slot_of(spec, args, txn.slotter.key_slot)
    if error is None and slot is not None and not txn.per_group:
        if txn.slot is None:
            txn.slot = slot
        elif txn.slot != slot:
            error = CROSSSLOT
    if error is not None:
        txn.dirty = True
        s.answer(stat, args, t0, error)
        return
    txn.queued.append(Queued(raw, slot))
    s.answer(stat, args, t0, QUEUED)


def _slot_of(spec: CommandSpec, args: list[bytes],
             key_slot: Callable[[bytes], int]) -> tuple[int | None, bytes | None]:
    """The slot a queued command needs (None: keyless), or the error it gets instead."""
    kind, name = spec.kind, spec.name
    if kind in _KEYED_KINDS:
        try:
            keys = commands.key_indexes(spec, args)
        except commands.CommandError as exc:
            return None, resp.error(str(exc))
        if not keys:
            return None, answers.keyless(spec, args)
        slot = key_slot(args[keys[0]])
        if any(key_slot(args[i]) != slot for i in keys[1:]):
            return None, CROSSSLOT
        return slot, answers.keyed_option(spec, args)
    if name in (b"publish", b"spublish"):
        from kvstore_proxy.pubsub import channel_slot

        return channel_slot(args[1], key_slot), None
    if name in _FORWARDED or name in commands.FORWARD_ANY:
        return None, None
    if kind is Kind.REFUSED:
        return None, resp.error("ERR " + spec.reason)
    return None, resp.error(f"ERR {spec.display_name} inside MULTI is not supported by kvstore-proxy")


# --- WATCH / UNWATCH / DISCARD ------------------------------------------------------------------


def _watch(s: Session, spec: CommandSpec, stat: CommandStat, args: list[bytes], raw: bytes, t0: float) -> None:
    st, txn = _transaction(s)
    if txn.multi:
        s.answer(stat, args, t0, resp.error("ERR WATCH inside MULTI is not allowed"))
        return
    keys = args[1:]
    slotter = s.worker.router.slotter
    slot = slotter.key_slot(keys[0])
    if any(slotter.key_slot(k) != slot for k in keys[1:]) or (txn.watching and txn.watch_slot != slot):
        s.answer(stat, args, t0, CROSSSLOT)
        _drop_if_idle(st)
        return
    first = not txn.watching
    txn.watching = True
    txn.watch_slot = slot
    if txn.broken or (not first and txn.watch is None):
        s.answer(stat, args, t0, resp.OK)  # doomed already: EXEC will answer nil
        return
    r = Reply(s, t0, stat, args)
    s.fifo.append(r)
    st.hold()

    def failed(err: bytes) -> None:
        if first:
            txn.watching = False
            txn.watch_slot = None
        finish(r, err)
        st.release()

    def then(master: Backend) -> None:
        w = txn.watch
        if w is not None:
            if w.address != master.address:  # the slot moved since the first WATCH
                _break(st, txn)
                finish(r, resp.OK)
                st.release()
                return
            lease = w.lease
        else:
            got = st.hub.pool.acquire(st, master.group, master.address, s.protocol)
            if isinstance(got, bytes):
                failed(got)
                return
            lease = got
            txn.watch = Watch(lease, slot, master.address, slotter)
            st.hub.watchers.add(st)
        lease.on_lost = lambda lease, err: _watch_lost(st, txn, lease, err, r)

        def replied(replies: list[bytes]) -> None:
            finish(r, replies[0])
            st.release()

        lease.arm(s.worker.config.timeout)
        lease.send(raw, replied)

    prepare(s, s.router.slot_backend[slot], keys, r, then, failed)


def _idle(st: ClientState) -> bool:
    txn = st.txn
    return txn is not None and not txn.multi and not txn.watching


def _watch_lost(st: ClientState, txn: Transaction, lease: Lease, err: bytes, r: Reply) -> None:
    if txn.watch is not None and txn.watch.lease is lease:
        txn.watch = None
        txn.broken = True
        st.hub.watchers.discard(st)
    if r.data is None:  # the WATCH itself was still waiting
        finish(r, err)
        st.release()


def _break(st: ClientState, txn: Transaction) -> None:
    """The watched slot is served elsewhere now: EXEC will answer nil; the lease goes back clean."""
    txn.broken = True
    w, txn.watch = txn.watch, None
    st.hub.watchers.discard(st)
    if w is not None:
        _give_back(st, w.lease)


def _give_back(st: ClientState, lease: Lease) -> None:
    """UNWATCH on the lease, then back to the pool (closed if it drops meanwhile)."""
    pool = st.hub.pool
    if pool.masters is not None and lease.address not in pool.masters:
        lease.close()  # a replaced master may never answer; nobody will lease it again anyway
        st.settle()
        return
    lease.on_lost = lambda lease, err: st.settle()

    def done(replies: list[bytes]) -> None:
        pool.release(lease)
        st.settle()

    lease.arm(st.session.worker.config.timeout)
    lease.send(_UNWATCH, done)


def watch_routes_changed(st: ClientState, router: Any) -> None:
    txn = st.txn
    w = txn.watch if txn is not None else None
    if w is None:
        st.hub.watchers.discard(st)
        return
    if serving(router, w.slot) != w.address or w.slotter is not router.slotter:
        log.info("watch_broken", client=st.session.id, slot=w.slot, addr=w.address)
        _break(st, txn)  # type: ignore[arg-type]


def _unwatch(s: Session, spec: CommandSpec, stat: CommandStat, args: list[bytes], raw: bytes, t0: float) -> None:
    st = s.state
    if st is not None and st.txn is not None:
        _end_watch(st, st.txn)
        _drop_if_idle(st)
    s.answer(stat, args, t0, resp.OK)


def _end_watch(st: ClientState, txn: Transaction) -> None:
    w, txn.watch = txn.watch, None
    txn.watching = txn.broken = False
    txn.watch_slot = None
    st.hub.watchers.discard(st)
    if w is not None:
        _give_back(st, w.lease)


def _drop_if_idle(st: ClientState) -> None:
    if _idle(st):
        st.txn = None
    st.settle()


def _discard(s: Session, spec: CommandSpec, stat: CommandStat, args: list[bytes], raw: bytes, t0: float) -> None:
    st = s.state
    if st is None or st.txn is None or not st.txn.multi:
        s.answer(stat, args, t0, resp.error("ERR DISCARD without MULTI"))
        return
    discard(st)
    s.answer(stat, args, t0, resp.OK)


def discard(st: ClientState) -> None:
    """Out of MULTI and no WATCH (DISCARD, RESET, a disconnect)."""
    txn = st.txn
    if txn is None:
        return
    txn.multi = False
    txn.queued = []
    _end_watch(st, txn)
    st.txn = None
    st.settle()


# --- EXEC ---------------------------------------------------------------------------------------


class _Part:
    """The commands of one EXEC bound for one master: prepared, sent on a lease, answered."""

    __slots__ = ("run", "indexes", "raws", "entries", "left", "master", "lease", "reply", "sent")

    def __init__(self, run: _Exec):
        self.run = run
        self.indexes: list[int] = []  # which queued command each of its commands is (a split one: a share)
        self.raws: list[bytes] = []
        self.entries: dict[Any, list[bytes]] = {}  # slot table entry -> keys to move first (Migrating) or []
        self.left = 0
        self.master: Backend | None = None
        self.lease: Lease | None = None
        self.reply: bytes | None = None
        self.sent = False

    def add(self, index: int, raw: bytes, entry: Any) -> None:
        self.indexes.append(index)
        self.raws.append(raw)
        self.entries.setdefault(entry, [])


class _Exec:
    """One EXEC in flight."""

    __slots__ = ("st", "r", "queued", "parts", "left", "watch", "splits")

    def __init__(self, st: ClientState, r: Reply, queued: list[Queued], watch: Watch | None):
        self.st = st
        self.r = r
        self.queued = queued
        self.parts: list[_Part] = []
        self.left = 0
        self.watch = watch
        # queued index -> (part, its key positions) for each share of a split command
        self.splits: dict[int, list[tuple[_Part, list[int]]]] = {}


def _exec(s: Session, spec: CommandSpec, stat: CommandStat, args: list[bytes], raw: bytes, t0: float) -> None:
    st = s.state
    txn = st.txn if st is not None else None
    if st is None or txn is None or not txn.multi:
        s.answer(stat, args, t0, resp.error("ERR EXEC without MULTI"))
        return
    r = Reply(s, t0, stat, args)
    s.fifo.append(r)
    queued, watching, watch = txn.queued, txn.watching, txn.watch
    if txn.dirty or txn.broken or (not queued and not watching):
        data = EXECABORT if txn.dirty else resp.NULL_ARRAY_OF[s.protocol] if txn.broken else _EMPTY
        discard(st)
        finish(r, data)
        return
    if watch is not None and serving(s.worker.router, watch.slot) != watch.address:
        discard(st)  # moved since the WATCH, and routes_changed has not run yet
        finish(r, resp.NULL_ARRAY_OF[s.protocol])
        return
    if txn.slotter is not s.worker.router.slotter:
        discard(st)  # the slots of its queued commands were computed under other key rules
        finish(r, RULES_CHANGED)
        return
    # The transaction leaves the client's state: the WATCH's lease travels with the run. Held
    # first, so that the state is not dropped while the run needs it.
    st.hold()
    txn.watch = None
    st.hub.watchers.discard(st)
    discard(st)
    run = _Exec(st, r, queued, watch)
    _plan(s, run, txn.slot if not txn.per_group else None, txn.per_group)
    st.hub.execs.add(run)
    run.left = len(run.parts)
    for part in run.parts:
        _prepare(s, part)


def _plan(s: Session, run: _Exec, slot: int | None, per_group: bool) -> None:
    """Split the queued commands into parts, one per master serving them now."""
    table = s.router.slot_backend
    by: dict[Any, _Part] = {}

    def part_for(entry: Any) -> _Part:
        where = _destination(entry)
        if where not in by:
            by[where] = _Part(run)
        return by[where]

    first = slot if not per_group else next((q.slot for q in run.queued if q.slot not in (None, SPLIT)), None)
    if first is None:
        first = s.worker.keyless_slot  # keyless only (EVAL ... 0, PING): where keyless scripts run
    for i, q in enumerate(run.queued):
        if q.slot == SPLIT:
            _plan_split(run, i, q, table, part_for)
            continue
        qslot = q.slot if q.slot is not None and per_group else first
        entry = table[qslot if qslot is not None else first]
        part_for(entry).add(i, q.raw, entry)
    if not by:  # WATCH, MULTI, EXEC: nothing queued, but EXEC must still check the WATCH
        entry = table[first]
        part_for(entry).entries[entry] = []
    for part in by.values():
        for entry in part.entries:
            if isinstance(entry, Migrating | RuleHub):
                part.entries[entry] = _keys(part.raws)
        part.left = len(part.entries)
    run.parts = list(by.values())


def _plan_split(run: _Exec, i: int, q: Queued, table: Any, part_for: Any) -> None:
    """One share of a multi-key command per master, as the compiled path (datapath.pyx) splits it outside MULTI."""
    spec, args = q.spec, q.args
    assert spec is not None and args is not None
    step = spec.step
    shares: dict[int, tuple[Any, list[int]]] = {}  # id(part) -> (entry, key positions)
    for pos in commands.key_indexes(spec, args):
        entry = table[run.st.session.worker.router.slotter.key_slot(args[pos])]
        part = part_for(entry)
        shares.setdefault(id(part), (entry, []))[1].append(pos)
    run.splits[i] = []
    for entry, positions in shares.values():
        part = part_for(entry)
        sub = [args[0]]
        for pos in positions:
            sub.extend(args[pos : pos + step])
        part.add(i, resp.command(sub), entry)
        run.splits[i].append((part, positions))


def _destination(entry: Any) -> Any:
    """Parts are per master: a migrating slot's commands join its target's."""
    if isinstance(entry, Migrating):
        return entry.target.address
    return entry.address if isinstance(entry, Backend) else entry


def _keys(raws: list[bytes]) -> list[bytes]:
    """Every key of these requests (to move them first from a migrating slot)."""
    import hiredis

    out: list[bytes] = []
    for raw in raws:
        reader = hiredis.Reader()
        reader.feed(raw)
        args = reader.gets()
        spec = commands.lookup(args)
        if spec is None or spec.kind not in _KEYED_KINDS:
            continue
        try:
            out.extend(args[k] for k in commands.key_indexes(spec, args))
        except commands.CommandError:
            continue
    return list(dict.fromkeys(out))


def _prepare(s: Session, part: _Part) -> None:
    def then(master: Backend) -> None:
        if part.master is not None and part.master.address != master.address:
            _part_failed(part, resp.error("TRYAGAIN the keys of the transaction moved meanwhile; retry"))
            return
        part.master = master
        part.left -= 1
        if not part.left and part.reply is None:
            _send(part)

    for entry, keys in part.entries.items():
        prepare(s, entry, keys, part.run.r, then, lambda err: _part_failed(part, err))


def _send(part: _Part) -> None:
    run, st = part.run, part.run.st
    master = part.master
    assert master is not None
    s = st.session
    if run.watch is not None:
        lease = run.watch.lease
        if lease.address != master.address or lease.state == "closed":
            part.reply = resp.NULL_ARRAY_OF[s.protocol]  # the slot moved (or the lease dropped) since WATCH
            _part_done(part)
            return
        run.watch = None
    else:
        got = st.hub.pool.acquire(st, master.group, master.address, s.protocol)
        if isinstance(got, bytes):
            _part_failed(part, got)
            return
        lease = got
    part.lease = lease
    part.sent = True
    raws = [*scripting.loads_for(s.worker, part.raws), _MULTI, *part.raws, _EXEC]
    lease.on_lost = lambda lease, err: _part_failed(part, err)

    def replied(replies: list[bytes]) -> None:
        part.lease = None
        st.hub.pool.release(lease)  # EXEC ends MULTI and every WATCH: clean
        part.reply = replies[-1]
        _part_done(part)

    lease.arm(s.worker.config.timeout)
    lease.send(b"".join(raws), replied, len(raws))


def _part_failed(part: _Part, err: bytes) -> None:
    if part.reply is not None:
        return
    part.reply = err
    part.lease = None
    _part_done(part)


def _part_done(part: _Part) -> None:
    run = part.run
    run.left -= 1
    if run.left:
        return
    st = run.st
    st.hub.execs.discard(run)
    if run.watch is not None:  # never sent: the WATCH's lease goes back with an UNWATCH
        _give_back(st, run.watch.lease)
        run.watch = None
    finish(run.r, run.parts[0].reply if len(run.parts) == 1 else _merge(run))  # type: ignore[arg-type]
    st.release()


def _merge(run: _Exec) -> bytes:
    """One EXEC reply from the parts' replies, in the order the commands were queued."""
    if not any(p.sent for p in run.parts):
        return run.parts[0].reply  # type: ignore[return-value]  # nothing ran anywhere: one error says it
    items: list[bytes] = [b""] * len(run.queued)
    shares: dict[tuple[int, int], bytes] = {}  # (queued index, id(part)) -> a split command's share
    for part in run.parts:
        got = _elements(part.reply)  # type: ignore[arg-type]
        if got is None or len(got) != len(part.indexes):
            reply = part.reply or b""
            error = reply if reply[:1] == b"-" else resp.error(
                f"ERR kvstore got no array from EXEC on {part.master.address if part.master else '?'}")
            got = [error] * len(part.indexes)
        for i, item in zip(part.indexes, got, strict=True):
            if i in run.splits:
                shares[(i, id(part))] = item
            else:
                items[i] = item
    for i, split in run.splits.items():
        items[i] = _merge_split(run, i, [(shares[(i, id(part))], positions) for part, positions in split])
    return b"*%d\r\n" % len(items) + b"".join(items)


def _merge_split(run: _Exec, i: int, shares: list[tuple[bytes, list[int]]]) -> bytes:
    """A split command's reply from its shares' replies, as the compiled path (MultiReply) merges them."""
    for reply, _ in shares:
        if reply[:1] in (b"-", b"!"):
            return reply
    spec, args = run.queued[i].spec, run.queued[i].args
    assert spec is not None and args is not None
    if spec.merge is Merge.OK:
        return resp.OK
    values = [resp.parse_one(reply) for reply, _ in shares]
    if spec.merge is Merge.SUM:
        return resp.integer(sum(values))  # type: ignore[arg-type]
    ordered: list[Any] = [None] * len(args)
    for value, (_, positions) in zip(values, shares, strict=True):
        for pos, v in zip(positions, value, strict=True):  # type: ignore[call-overload]
            ordered[pos] = v
    return run.st.session.enc.bulk_array(ordered[1:])


def _elements(raw: bytes) -> list[bytes] | None:
    """The raw elements of an array reply, or None if it is not one."""
    if raw[:1] != b"*":
        return None
    nl = raw.find(b"\r\n")
    count = int(raw[1:nl])
    if count < 0:
        return None
    out, p = [], nl + 2
    for _ in range(count):
        end, _complete = resp.scan_reply(raw, p, len(raw), [])
        out.append(raw[p:end])
        p = end
    return out


def exec_routes_changed(run: _Exec, masters: set[str]) -> None:
    """A master replaced while its part of an EXEC is in flight: outcome unknown, as on the shared connections."""
    for part in run.parts:
        lease = part.lease
        if lease is not None and lease.address not in masters:
            lease.abort("master changed while the transaction was in flight; outcome unknown")


_HANDLERS = {b"multi": _multi, b"exec": _exec, b"discard": _discard, b"watch": _watch, b"unwatch": _unwatch}
