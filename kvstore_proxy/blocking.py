"""Blocking commands (BLPOP ... BZMPOP, XREAD/XREADGROUP BLOCK) on a lease, across reshards and failovers.

::

    BLPOP k.. T ─► keys in one slot ─► the session is held (later requests wait, as in Redis)
        ─► prepare (earlier requests first; a migrating slot's keys moved to the target)
        ─► a lease to the slot's master ─► BLPOP there; Redis enforces T (no proxy timeout applies)
        ─► its reply to the client, the lease back to the pool, the held requests replayed

When the slot is then served by another master (marked and released, committed, master replaced,
fenced) the proxy asks the old master ``CLIENT UNBLOCK <id> ERROR``. Its ``-UNBLOCKED`` means
nothing was popped: the command is sent again where the slot is served now, with the time it has
left. If an element was popped first, that reply wins and is delivered. A demoted master answers
``-UNBLOCKED`` by itself (Redis does so when it becomes a replica); that re-blocks too.

A client that disconnects while blocked is unblocked the same way; if an element was popped for it
in that instant, the proxy pushes it back where it came from (LPUSH for BLPOP, RPUSH for BRPOP,
ZADD for the sorted-set pops); BLMOVE/BRPOPLPUSH leave it in the destination list they moved it
to. If the lease's connection breaks under a blocked command the proxy cannot know whether an
element was popped and lost with it: the client gets an error saying the outcome is unknown
(XREAD, which consumes nothing, is sent again instead).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from kvstore_proxy import resp
from kvstore_proxy.backend import Backend
from kvstore_proxy.clientstate import ClientState, Step, finish, prepare, serving, state_of
from kvstore_proxy.datapath import Reply
from kvstore_proxy.migrating import Migrating
from kvstore_proxy.rulehold import RuleHub

if TYPE_CHECKING:
    from kvstore_proxy.commands import CommandSpec
    from kvstore_proxy.datapath import CommandStat
    from kvstore_proxy.leases import Lease
    from kvstore_proxy.session import Session

log = structlog.get_logger("kvstore.proxy.blocking")

_SECONDS_LAST = frozenset({b"blpop", b"brpop", b"brpoplpush", b"blmove", b"bzpopmin", b"bzpopmax"})
_SECONDS_FIRST = frozenset({b"blmpop", b"bzmpop"})
_STREAMS = frozenset({b"xread", b"xreadgroup"})
RETRY_MIN, RETRY_MAX = 0.05, 1.0
UNBLOCK_AGAIN = 0.01  # CLIENT UNBLOCK answered 0: the command had not reached Redis yet


def blocks(spec: CommandSpec, args: list[bytes]) -> bool:
    """Only XREAD/XREADGROUP with BLOCK wait; without it they are plain same-slot commands."""
    return spec.name not in _STREAMS or _block_arg(args) is not None


def _block_arg(args: list[bytes]) -> int | None:
    """The position of XREAD/XREADGROUP's BLOCK milliseconds, walking its options as Redis parses them."""
    i = 1
    while i < len(args):
        word = args[i].lower()
        if word == b"block":
            return i + 1 if i + 1 < len(args) else None
        if word == b"count":
            i += 2
        elif word == b"group":
            i += 3
        elif word == b"noack":
            i += 1
        else:
            return None
    return None


class Blocked:
    """One blocking command of one client, from its arrival to its reply."""

    __slots__ = ("st", "spec", "args", "raw", "r", "slot", "keys", "deadline", "tpos", "millis", "lease",
                 "address", "unblocking", "gone", "safe", "timer", "sent", "backoff")

    def __init__(self, st: ClientState, spec: CommandSpec, args: list[bytes], raw: bytes, r: Reply, slot: int,
                 keys: list[bytes]):
        self.st = st
        self.spec = spec
        self.args = args
        self.raw = raw
        self.r = r
        self.slot = slot
        self.keys = keys
        name = spec.name
        self.millis = name in _STREAMS
        self.tpos = (_block_arg(args) if self.millis else len(args) - 1 if name in _SECONDS_LAST else 1)
        self.safe = name == b"xread"  # consumes nothing: may always be sent again
        self.deadline = self._deadline(r.t0)
        self.lease: Lease | None = None
        self.address: str | None = None
        self.unblocking = False
        self.gone = False  # the client disconnected
        self.timer: Any = None
        self.sent = False
        self.backoff = RETRY_MIN

    def _deadline(self, t0: float) -> float | None:
        """When the command times out (None: never, or a timeout Redis will refuse anyway)."""
        if self.tpos is None:
            return None
        try:
            timeout = float(self.args[self.tpos])
        except ValueError:
            return None
        if timeout <= 0 or timeout != timeout or timeout == float("inf"):
            return None
        return t0 + (timeout / 1000 if self.millis else timeout)

    def request(self) -> bytes:
        """The command as sent now: the first time as the client sent it, later with the time left."""
        if not self.sent:
            self.sent = True
            return self.raw
        args = list(self.args)
        if self.deadline is not None and self.tpos is not None:
            left = max(self.deadline - time.monotonic(), 0.001)
            args[self.tpos] = b"%d" % max(1, int(left * 1000)) if self.millis else b"%.3f" % left
        return resp.command(args)


def start(s: Session, spec: CommandSpec, stat: CommandStat, args: list[bytes], raw: bytes, t0: float, slot: int,
          keys: list[bytes]) -> None:
    st = state_of(s)
    r = Reply(s, t0, stat, args)
    s.fifo.append(r)
    b = Blocked(st, spec, args, raw, r, slot, keys)
    st.block = b
    st.hold()
    st.hub.blocked.add(b)
    _dispatch(b)


def _dispatch(b: Blocked) -> None:
    b.timer = None
    if b.gone:
        _finish(b)
        return
    s = b.st.session
    if b.deadline is not None and time.monotonic() >= b.deadline and b.sent:
        _done(b, resp.NULL_ARRAY_OF[s.protocol])  # timed out while it could not be sent anywhere
        return
    b.slot = s.worker.router.slotter.key_slot(b.keys[0])  # key rules may have changed meanwhile
    entry = s.router.slot_backend[b.slot]
    if isinstance(entry, RuleHub) and entry.settle(b.keys) is entry:
        _retry(b)  # its keys are moving to another group (a key rule change): wait until they are there
        return
    if isinstance(entry, Migrating) and not s.worker.router.migration_released:
        _retry(b)  # the slot is being marked on every proxy: wait until its keys may move
        return
    prepare(s, entry, b.keys, b.r, lambda master: _block_on(b, master), lambda err: _done(b, err))


def _block_on(b: Blocked, master: Backend) -> None:
    if b.gone:
        _finish(b)
        return
    st = b.st
    got = st.hub.pool.acquire(st, master.group, master.address, st.session.protocol)
    if isinstance(got, bytes):
        _done(b, got)
        return
    lease = got
    b.lease, b.address = lease, master.address
    lease.on_lost = lambda lease, err: _lost(b, err)
    lease.send(b.request(), lambda replies: _replied(b, lease, replies[0]))


def _replied(b: Blocked, lease: Lease, raw: bytes) -> None:
    b.lease = None
    _cancel(b)
    b.st.hub.pool.release(lease)  # an answered blocking command leaves nothing behind
    if b.gone:
        _return_element(b, raw)
        _finish(b)
        return
    if raw.startswith(b"-UNBLOCKED"):
        asked, b.unblocking = b.unblocking, False
        log.info("blocked_client_moved", client=b.st.session.id, slot=b.slot, old=b.address,
                 by="proxy" if asked else "redis")
        # Asked by us: the slot is served elsewhere now. Not asked: the master is being demoted,
        # and ZooKeeper's news of it may take a moment.
        _retry(b, 0.0 if asked else 0.2)
        return
    b.backoff = RETRY_MIN
    _done(b, raw)


def _lost(b: Blocked, err: bytes) -> None:
    b.lease = None
    _cancel(b)
    if b.gone:
        _finish(b)
        return
    text = err[1:].rstrip(b"\r\n").decode(errors="replace")
    if b.safe or " connect failed:" in text:
        _retry(b)  # nothing can have been consumed
        return
    _done(b, resp.error(f"{text} while the command was blocked; outcome unknown"))


def _retry(b: Blocked, delay: float | None = None) -> None:
    if delay is None:
        delay = b.backoff
        b.backoff = min(b.backoff * 2, RETRY_MAX)
    b.sent = True  # from now on the command carries the time it has left
    b.timer = b.st.session.worker.loop.call_later(delay, _dispatch, b)


def _cancel(b: Blocked) -> None:
    if b.timer is not None:
        b.timer.cancel()
        b.timer = None


def _done(b: Blocked, data: bytes) -> None:
    finish(b.r, data)
    _finish(b)


def _finish(b: Blocked) -> None:
    _cancel(b)
    st = b.st
    st.hub.blocked.discard(b)
    if st.block is b:
        st.block = None
    st.release()


# --- moving a blocked client --------------------------------------------------------------------


def routes_changed(b: Blocked, router: Any, masters: set[str]) -> None:
    if b.lease is None or b.unblocking or b.gone:
        return  # not on a master yet (it will read the table when it is sent), or being moved already
    b.slot = router.slotter.key_slot(b.keys[0])  # key rules may have changed
    if serving(router, b.slot) != b.address:
        _unblock(b)


def _unblock(b: Blocked) -> None:
    """Ask the master the command waits on to end it with -UNBLOCKED (its reply decides what next)."""
    lease = b.lease
    if lease is None:
        return
    b.unblocking = True
    worker = b.st.session.worker
    if not lease.redis_id:  # not greeted yet: ask again in a moment
        b.timer = worker.loop.call_later(UNBLOCK_AGAIN, _unblock, b)
        return
    cmd = resp.command([b"CLIENT", b"UNBLOCK", lease.redis_id, b"ERROR"])

    def answered(raw: bytes) -> None:
        # 0: the command had not reached Redis when the unblock did (different connections).
        if raw[:2] == b":0" and b.lease is lease:
            b.timer = worker.loop.call_later(UNBLOCK_AGAIN, _unblock, b)

    backend = worker.router.backends.get(lease.group)
    if backend is not None and backend.address == lease.address:
        backend.send(Step(answered, lambda err: None), cmd)
        return
    # The group's master was replaced: ask the old one directly, and give up on it after
    # --timeout (a frozen or vanished master never answers; the client then learns the
    # outcome is unknown).
    pool = b.st.hub.pool
    ctl = pool.acquire(None, lease.group, lease.address, 2)
    if isinstance(ctl, bytes):
        lease.abort("master changed while the command was blocked")
        return
    ctl.on_lost = lambda c, err: None

    def ctl_answered(replies: list[bytes]) -> None:
        ctl.close()
        answered(replies[0])

    ctl.send(cmd, ctl_answered)
    timeout = worker.config.timeout
    b.timer = worker.loop.call_later(
        timeout, lease.abort, f"master changed while the command was blocked; no answer within {timeout:g}s")


def client_gone(st: ClientState) -> None:
    """The client disconnected while blocked: unblock it; nothing is popped for it afterwards."""
    b = st.block
    if b is None:
        return
    b.gone = True
    if b.lease is not None and not b.unblocking:
        _unblock(b)


def _return_element(b: Blocked, raw: bytes) -> None:
    """An element popped for a client that had just gone: put it back where it was taken from."""
    if raw[:1] not in (b"*", b">"):
        return  # an error, a timeout (*-1 or _), or nothing to return
    try:
        cmd = pushback(b.spec.name, b.args, resp.parse_one(raw))
    except (ValueError, TypeError, IndexError, resp.ProtocolError) as exc:
        log.error("blocked_element_not_returned", client=b.st.session.id, error=str(exc), reply=raw[:120])
        return
    if cmd is None:
        return
    client = b.st.session.id

    def returned(reply: bytes) -> None:
        event = log.error if reply[:1] == b"-" else log.info
        event("blocked_element_returned", client=client, command=cmd[0], key=cmd[1], reply=reply[:80])

    b.st.session.worker.router.slot_backend[b.slot].send(Step(returned, returned, cmd), resp.command(cmd))


def pushback(name: bytes, args: list[bytes], value: Any) -> list[bytes] | None:
    """The command that undoes a blocking pop's reply ``value`` (as parsed), or None if it needs none.

    BLMOVE/BRPOPLPUSH moved the element into their destination list, where it stays; XREAD
    consumed nothing; XREADGROUP left its entries pending for the consumer (XCLAIM recovers them).
    """
    if name in (b"blpop", b"brpop"):
        key, element = value
        return [b"LPUSH" if name == b"blpop" else b"RPUSH", key, element]
    if name == b"blmpop":
        key, elements = value
        side = args[3 + int(args[2])].lower()
        return [b"LPUSH" if side == b"left" else b"RPUSH", key, *reversed(elements)]
    if name in (b"bzpopmin", b"bzpopmax"):
        key, member, score = value
        return [b"ZADD", key, _score(score), member]
    if name == b"bzmpop":
        key, pairs = value
        return [b"ZADD", key, *(x for member, score in pairs for x in (_score(score), member))]
    return None


def _score(score: Any) -> bytes:
    return score if isinstance(score, bytes) else repr(float(score)).encode()
