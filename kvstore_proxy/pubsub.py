"""Pub/sub across groups and proxies: each subscriber's own leases, channels routed by slot.

Where a channel lives: the group that owns the slot of its name (hash tags apply, through the one
slot function), except keyspace notifications ``__keyspace@<db>__:<key>``, which live with
``<key>`` (the group holding a key publishes its notifications), and ``__keyevent@<db>__:<event>``,
which every group publishes. PUBLISH and SPUBLISH go to the channel's group. A subscriber holds
one RESP2 lease per master it needs (not shared with other clients, so that Redis counts
subscribers, not proxies):

- SUBSCRIBE / SSUBSCRIBE ch: the channel's group (both groups while its slot migrates, so that
  publishers on proxies that have, or have not yet, applied a change both reach it);
- PSUBSCRIBE and keyevent channels: every group (each message is published on one group, so
  each arrives once).

A message reaches a client once: it is published on one group, and the client has at most one
lease per group; it is delivered only while the client is subscribed to its channel or pattern.
So Redis's own counts are right too: PUBLISH's receivers, PUBSUB NUMSUB (the largest count
among the groups: the channel's group has every subscriber), NUMPAT (every group has every
pattern). The proxy answers SUBSCRIBE itself, with the client's own counts, once every group
involved confirmed (a message published after the client saw the confirmation reaches it).

After a reshard, a failover or a new group, :func:`reconcile` moves the subscriptions (messages
published in between may be lost: pub/sub is at-most-once). A RESP2 subscriber may only send
(P|S)SUBSCRIBE, (P|S)UNSUBSCRIBE, PING, QUIT and RESET; a RESP3 one anything, its messages
arriving as push frames between replies. A subscriber whose unsent output passes
``--pubsub-output-limit`` is disconnected.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from kvstore_cluster.slots import key_slot
from kvstore_proxy import fanout, resp
from kvstore_proxy.backend import Backend
from kvstore_proxy.clientstate import ClientState, notify, state_of
from kvstore_proxy.datapath import CommandStat, Reply
from kvstore_proxy.migrating import Migrating
from kvstore_proxy.rulehold import unhub

if TYPE_CHECKING:
    from kvstore_proxy.commands import CommandSpec
    from kvstore_proxy.leases import Lease
    from kvstore_proxy.session import Session

log = structlog.get_logger("kvstore.proxy.pubsub")

ALLOWED_RESP2 = frozenset({b"subscribe", b"psubscribe", b"ssubscribe", b"unsubscribe", b"punsubscribe",
                           b"sunsubscribe", b"ping", b"quit", b"reset"})
_CONFIRMATIONS = frozenset({b"subscribe", b"unsubscribe", b"psubscribe", b"punsubscribe", b"ssubscribe",
                            b"sunsubscribe"})
_KEYSPACE = b"__keyspace@"
_KEYEVENT = b"__keyevent@"
_PUSH_STAT = CommandStat("(pubsub message)")  # messages queued behind pending replies; not in INFO
RETRY_MIN, RETRY_MAX = 0.1, 2.0
C, P, S = 0, 1, 2  # channels, patterns, shard channels: index into the sets and the commands below
_SUB = (b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE")
_UNSUB = (b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"SUNSUBSCRIBE")
_KIND = {b"subscribe": C, b"psubscribe": P, b"ssubscribe": S,
         b"unsubscribe": C, b"punsubscribe": P, b"sunsubscribe": S}


def not_allowed(spec: CommandSpec) -> bytes:
    """A RESP2 subscriber's refusal, as Redis words it."""
    return resp.error(f"ERR Can't execute '{spec.name.decode()}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / "
                      "PING / QUIT / RESET are allowed in this context")


def channel_slot(channel: bytes, slot: Callable[[bytes], int] = key_slot) -> int:
    """The slot a channel lives in: its name's, or for a keyspace notification its key's (``slot``:
    the cluster's slot function with its key rules, ``Router.slotter.key_slot``)."""
    if channel.startswith(_KEYSPACE):
        end = channel.find(b"__:", len(_KEYSPACE))
        if end >= 0:
            return slot(channel[end + 3 :])
    return slot(channel)


class SubLease:
    """One subscriber's lease to one master, and what is subscribed on it (as sent)."""

    __slots__ = ("lease", "sets", "pending")

    def __init__(self, lease: Lease):
        self.lease = lease
        self.sets: tuple[set[bytes], set[bytes], set[bytes]] = (set(), set(), set())
        self.pending: deque[list[Any]] = deque()  # [confirmations still due, callback or None]

    def empty(self) -> bool:
        return not any(self.sets) and not self.pending


class Subscriptions:
    """One client's channels, patterns and shard channels (in the order subscribed), and its leases."""

    __slots__ = ("st", "names", "leases", "timer", "backoff", "soft_since")

    def __init__(self, st: ClientState):
        self.st = st
        self.names: tuple[dict[bytes, None], dict[bytes, None], dict[bytes, None]] = ({}, {}, {})
        self.leases: dict[str, SubLease] = {}
        self.timer: Any = None
        self.backoff = RETRY_MIN
        self.soft_since: float | None = None

    def count(self) -> int:
        return len(self.names[C]) + len(self.names[P]) + len(self.names[S])

    def counted(self, kind: int) -> int:
        """The count Redis puts in a confirmation: shard channels apart, channels and patterns together."""
        return len(self.names[S]) if kind == S else len(self.names[C]) + len(self.names[P])


def handle(s: Session, spec: CommandSpec, stat: CommandStat, args: list[bytes], raw: bytes, t0: float) -> None:
    name = spec.name
    if name in (b"subscribe", b"psubscribe", b"ssubscribe"):
        _subscribe(s, _KIND[name], stat, args, t0)
    elif name in (b"unsubscribe", b"punsubscribe", b"sunsubscribe"):
        _unsubscribe(s, _KIND[name], stat, args, t0)
    elif name in (b"publish", b"spublish"):
        _publish(s, stat, args, raw, t0)
    else:
        _pubsub(s, name, stat, args, t0)


def _push(s: Session, kind: bytes, name: bytes | None, count: int) -> bytes:
    head = b">3\r\n" if s.protocol == 3 else b"*3\r\n"
    return head + resp.bulk(kind) + (resp.bulk(name) if name is not None else s.enc.null) + resp.integer(count)


def _subscribe(s: Session, kind: int, stat: CommandStat, args: list[bytes], t0: float) -> None:
    st = state_of(s)
    subs = st.subs
    if subs is None:
        subs = st.subs = Subscriptions(st)
        st.hub.subscribers.add(st)
    names = subs.names[kind]
    verb = _SUB[kind].lower()
    added = [n for n in dict.fromkeys(args[1:]) if n not in names]
    out = []
    for name in args[1:]:
        names[name] = None
        out.append(_push(s, verb, name, subs.counted(kind)))
    r = Reply(s, t0, stat, args)
    s.fifo.append(r)
    # Held until every master confirmed, as one Redis connection would be: a PUBLISH the client
    # sends next must find the subscription in place.
    st.hold()

    def ready(error: bytes | None) -> None:
        if error is not None:  # no lease to some master: the client is not subscribed to these
            for name in added:
                names.pop(name, None)
            reconcile(st)
        if r.data is None:
            r.data = error if error is not None else b"".join(out)
        st.release()
        _settle(st)

    reconcile(st, ready)


def _unsubscribe(s: Session, kind: int, stat: CommandStat, args: list[bytes], t0: float) -> None:
    st = s.state
    subs = st.subs if st is not None else None
    names = subs.names[kind] if subs is not None else {}
    verb = _UNSUB[kind].lower()
    wanted = args[1:] or list(names)
    out = []
    for name in wanted:
        names.pop(name, None)
        out.append(_push(s, verb, name, subs.counted(kind) if subs is not None else 0))
    if not wanted:  # nothing to leave: one confirmation naming no channel
        out.append(_push(s, verb, None, subs.counted(kind) if subs is not None else 0))
    # Answered at once: messages of these channels still on their way are no longer delivered.
    s.answer(stat, args, t0, b"".join(out))
    if st is not None and subs is not None:
        reconcile(st)
        _settle(st)


def _settle(st: ClientState) -> None:
    """No subscription left: the session is a plain client again once its leases are given back."""
    subs = st.subs
    if subs is not None and not subs.count() and not subs.leases:
        _cancel(subs)
        st.subs = None
        st.hub.subscribers.discard(st)
    st.settle()


def drop_all(st: ClientState) -> None:
    """RESET or a disconnect: no subscription at all, every subscriber lease closed."""
    subs = st.subs
    if subs is None:
        return
    _cancel(subs)
    leases = list(subs.leases.values())
    subs.leases.clear()
    for sl in leases:
        _unwait(sl)
        sl.lease.close()
    st.subs = None
    st.hub.subscribers.discard(st)
    st.settle()


def _cancel(subs: Subscriptions) -> None:
    if subs.timer is not None:
        subs.timer.cancel()
        subs.timer = None


# --- where subscriptions must be, and getting them there ----------------------------------------


def _masters(router: Any) -> list[str]:
    return [b.address for b in router.group_order if isinstance(b, Backend)]


def _addresses(router: Any, kind: int, name: bytes, masters: list[str]) -> list[str]:
    """The masters a subscription must be on (empty while nobody may serve its slot)."""
    if kind == P or name.startswith(_KEYEVENT):
        return masters
    entry = unhub(router.slot_backend[channel_slot(name, router.slotter.key_slot)])
    if isinstance(entry, Migrating):
        return [entry.source.address, entry.target.address]
    return [entry.address] if isinstance(entry, Backend) else []


def reconcile(st: ClientState, ready: Callable[[bytes | None], None] | None = None) -> None:
    """Make each lease's subscriptions what the client's names and the table want; ``ready(error)``
    once every master involved confirmed (``error``: the reply to give if a lease was refused)."""
    subs = st.subs
    if subs is None:
        if ready is not None:
            ready(None)
        return
    s = st.session
    router = s.worker.router
    masters = _masters(router)
    wanted: dict[str, tuple[set[bytes], set[bytes], set[bytes]]] = {}
    for kind in (C, P, S):
        for name in subs.names[kind]:
            for address in _addresses(router, kind, name, masters):
                wanted.setdefault(address, (set(), set(), set()))[kind].add(name)
    due = [1]  # confirmations awaited, plus one for this function itself
    error: list[bytes] = []

    def confirmed() -> None:
        due[0] -= 1
        if not due[0] and ready is not None:
            ready(error[0] if error else None)

    for address, sl in list(subs.leases.items()):
        if address not in wanted:
            if address in masters:
                _change(sl, subs, (set(), set(), set()), None)  # back to the pool once confirmed
            else:  # no longer a master: nothing to ask it
                del subs.leases[address]
                _unwait(sl)
                sl.lease.close()
    for address, sets in wanted.items():
        sl = subs.leases.get(address)
        if sl is None:
            got = st.hub.pool.acquire(st, _group_of(router, address), address, 2)
            if isinstance(got, bytes):
                error.append(got)
                _retry_later(subs)
                continue
            sl = subs.leases[address] = SubLease(got)
            got.sink = lambda lease, raw, sl=sl: _received(subs, sl, raw)
            got.on_lost = lambda lease, err, address=address: _lost(subs, address, err)
        due[0] += _change(sl, subs, sets, confirmed)
    confirmed()


def _group_of(router: Any, address: str) -> str:
    for gid, b in router.backends.items():
        if b.address == address:
            return gid
    return "?"


def _change(sl: SubLease, subs: Subscriptions, want: tuple[set[bytes], set[bytes], set[bytes]],
            confirmed: Callable[[], None] | None) -> int:
    """Send the (UN)SUBSCRIBEs that make ``sl`` hold ``want``; how many of them ``confirmed`` waits for."""
    waits = 0
    for kind in (C, P, S):
        have = sl.sets[kind]
        gone = [n for n in have if n not in want[kind]]
        new = [n for n in want[kind] if n not in have]
        if gone:
            have.difference_update(gone)
            sl.pending.append([len(gone), None])
            sl.lease.write(resp.command([_UNSUB[kind], *gone]))
        if new:
            have.update(new)
            sl.pending.append([len(new), confirmed])
            sl.lease.write(resp.command([_SUB[kind], *new]))
            waits += confirmed is not None
    _maybe_give_back(sl, subs)
    return waits


def _maybe_give_back(sl: SubLease, subs: Subscriptions) -> None:
    """A lease left with no subscription, every confirmation in, is clean: back to the pool."""
    if sl.empty():
        for address, other in list(subs.leases.items()):
            if other is sl:
                del subs.leases[address]
        subs.st.hub.pool.release(sl.lease)
        if not subs.count():
            _settle(subs.st)


def _received(subs: Subscriptions, sl: SubLease, raw: bytes) -> None:
    """Every reply of a subscriber lease: a message (delivered if still wanted) or a confirmation."""
    if raw[:1] == b"-":  # a refused (UN)SUBSCRIBE answers once for all its names
        log.warning("pubsub_refused", client=subs.st.session.id, addr=sl.lease.address, error=raw[:100])
        if sl.pending:
            _confirm(subs, sl, sl.pending[0][0])
        return
    try:
        kind, name = _head(raw)
    except (ValueError, IndexError):
        log.warning("pubsub_unreadable", addr=sl.lease.address, head=raw[:80])
        return
    if kind == b"message":
        wanted = name in subs.names[C]
    elif kind == b"pmessage":
        wanted = name in subs.names[P]
    elif kind == b"smessage":
        wanted = name in subs.names[S]
    elif kind in _CONFIRMATIONS:
        _confirm(subs, sl, 1)
        return
    else:
        return
    if wanted:
        s = subs.st.session
        deliver(s, raw if s.protocol == 2 else b">" + raw[1:])


def _confirm(subs: Subscriptions, sl: SubLease, n: int) -> None:
    pending = sl.pending
    while n and pending:
        head = pending[0]
        take = min(n, head[0])
        head[0] -= take
        n -= take
        if not head[0]:
            pending.popleft()
            if head[1] is not None:
                head[1]()
    if not pending:
        subs.backoff = RETRY_MIN
        _maybe_give_back(sl, subs)


def _head(raw: bytes) -> tuple[bytes, bytes | None]:
    """The first two elements of a pub/sub frame (``*N`` of bulk strings): its kind and channel/pattern."""
    p = raw.index(b"\r\n") + 2
    kind, p = _bulk(raw, p)
    name, _ = _bulk(raw, p)
    return kind or b"", name


def _bulk(raw: bytes, p: int) -> tuple[bytes | None, int]:
    nl = raw.index(b"\r\n", p)
    if raw[p] != 36:  # '$'
        return None, nl + 2
    n = int(raw[p + 1 : nl])
    if n < 0:
        return None, nl + 2
    return raw[nl + 2 : nl + 2 + n], nl + 4 + n


def _lost(subs: Subscriptions, address: str, err: bytes) -> None:
    """A subscriber lease dropped: whoever waited on it is answered, and the subscriptions are
    made again (where the table says) after a backoff."""
    sl = subs.leases.pop(address, None)
    if sl is not None:
        _unwait(sl)
    _retry_later(subs)


def _unwait(sl: SubLease) -> None:
    """Whoever waits for this lease's confirmations stops waiting (it is gone)."""
    pending = list(sl.pending)
    sl.pending.clear()
    for _, callback in pending:
        if callback is not None:
            callback()


def _retry_later(subs: Subscriptions) -> None:
    if subs.timer is None and subs.st.subs is subs:
        subs.timer = subs.st.session.worker.loop.call_later(subs.backoff, _retry, subs)
        subs.backoff = min(subs.backoff * 2, RETRY_MAX)


def _retry(subs: Subscriptions) -> None:
    subs.timer = None
    if subs.st.subs is subs:
        reconcile(subs.st)


# --- delivering ---------------------------------------------------------------------------------


def deliver(s: Session, data: bytes) -> None:
    """A message to a subscriber: after the replies it still waits for, then the output-buffer limit."""
    transport = s.transport
    if transport is None:
        return
    if s.fifo:
        r = Reply(s, time.monotonic(), _PUSH_STAT, [])
        r.data = data
        s.fifo.append(r)
        notify(s)
    else:
        transport.write(data)
    hard, soft, seconds = s.worker.config.pubsub_output_limit
    size = transport.get_write_buffer_size()
    subs = s.state.subs if s.state is not None else None
    if hard and size > hard:
        _too_slow(s, size, "hard")
    elif soft and size > soft and subs is not None:
        now = time.monotonic()
        if subs.soft_since is None:
            subs.soft_since = now
        elif now - subs.soft_since >= seconds:
            _too_slow(s, size, "soft")
    elif subs is not None:
        subs.soft_since = None


def _too_slow(s: Session, size: int, which: str) -> None:
    log.warning("pubsub_client_too_slow", client=s.id, addr=s.addr, unsent_bytes=size, limit=which)
    if s.transport is not None:
        s.transport.abort()


# --- PUBLISH and PUBSUB -------------------------------------------------------------------------


def _publish(s: Session, stat: CommandStat, args: list[bytes], raw: bytes, t0: float) -> None:
    """To the channel's group; while its slot migrates, to the side every proxy's subscribers are on."""
    entry = unhub(s.router.slot_backend[channel_slot(args[1], s.worker.router.slotter.key_slot)])
    if isinstance(entry, Migrating):
        entry = entry.target if s.worker.router.migration_released else entry.source
    r = Reply(s, t0, stat, args)
    s.fifo.append(r)
    entry.send(r, raw)


def _pubsub(s: Session, name: bytes, stat: CommandStat, args: list[bytes], t0: float) -> None:
    backends = [b for b in s.router.all_backends() if isinstance(b, Backend)]
    raw = resp.command(args)
    if name in (b"pubsub|channels", b"pubsub|shardchannels"):
        def merge(results: list[Any]) -> bytes:
            return resp.array([resp.bulk(c) for c in dict.fromkeys(c for r in results for c in r)])
    elif name in (b"pubsub|numsub", b"pubsub|shardnumsub"):
        def merge(results: list[Any]) -> bytes:
            counts = dict.fromkeys(args[2:], 0)
            for r in results:
                for i in range(0, len(r), 2):
                    counts[r[i]] = max(counts.get(r[i], 0), r[i + 1])
            return resp.array([x for c in args[2:] for x in (resp.bulk(c), resp.integer(counts[c]))])
    else:  # numpat: every group has every pattern
        def merge(results: list[Any]) -> bytes:
            return resp.integer(max(results, default=0))
    out = fanout.fan_out(s, stat, args, t0, [(b, raw) for b in backends], merge)
    if out is not None:
        s.answer(stat, args, t0, out)
