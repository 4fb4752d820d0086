"""Leased backend connections: exclusive connections to a group's master, lent to one client at a time.

Plain requests share each group's pipelined :class:`~kvstore_proxy.backend.Backend` connection. A
client that needs a connection of its own — a transaction (WATCH ... EXEC), a blocking command,
its subscriptions — gets a :class:`Lease` from the worker's :class:`LeasePool`: a connection to
one master, greeted first (``AUTH``, or ``HELLO 3`` for a RESP3 client, whose replies it then
forwards as they are) and asked its ``CLIENT ID``. It is the client's alone until given back,
and it is given back only in a known clean state (its transaction ended, its blocking command
answered); anything else closes it. Idle leases are kept per master for the next client.

Caps: ``--max-leases`` per worker and ``--max-leases-per-client``; past either, the command
that needed one gets ``-ERR max number of ... reached``, as Redis answers past ``maxclients``.
The per-request hot path never touches any of this.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from kvstore_cluster import tls
from kvstore_cluster.codec import parse_address
from kvstore_proxy import resp
from kvstore_proxy.sockets import set_nodelay

log = structlog.get_logger("kvstore.proxy.leases")

CONNECTING, READY, CLOSED = "connecting", "ready", "closed"
IDLE_PER_MASTER = 32  # idle leases kept per (master, protocol); more are closed when given back

OnReplies = Callable[[list[bytes]], None]
OnLost = Callable[["Lease", bytes], None]


class Lease(asyncio.Protocol):
    """One exclusive connection to a master. Replies go, in order, to the callbacks given to
    :meth:`send`; with a ``sink`` set (pub/sub), every reply no callback waits for goes there.

    If the connection fails, the callbacks are dropped and ``on_lost(lease, error)`` is called
    once: the error reply says what happened, worded as the shared backends word it (``connect
    failed`` means nothing was sent; ``connection lost`` means requests may have run).
    """

    __slots__ = ("pool", "group", "address", "host", "port", "protocol", "state", "transport", "out", "waiting",
                 "sink", "on_lost", "holder", "redis_id", "_buf", "_stack", "_scan", "_timer", "_task")

    def __init__(self, pool: LeasePool, group: str, address: str, protocol: int):
        self.pool = pool
        self.group = group
        self.address = address
        self.host, self.port = parse_address(address)  # checked when the groups table was read
        self.protocol = protocol
        self.state = CONNECTING
        self.transport: Any = None
        self.out: list[bytes] = []
        self.waiting: deque[list[Any]] = deque()  # [replies still expected, replies so far, callback]
        self.sink: Callable[[Lease, bytes], None] | None = None
        self.on_lost: OnLost | None = None
        self.holder: Any = None  # the ClientState counted against --max-leases-per-client
        self.redis_id = b""  # CLIENT ID on the master, for CLIENT UNBLOCK
        self._buf = bytearray()
        self._stack: list[int] = []
        self._scan = 0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        password = self.pool.password
        if self.protocol == 3:
            hello = [b"HELLO", b"3"] + ([b"AUTH", b"default", password.encode()] if password else [])
            self.send(resp.command(hello), self._greeted)
        elif password:
            self.send(resp.command([b"AUTH", password.encode()]), self._greeted)
        self.send(resp.command([b"CLIENT", b"ID"]), self._got_id)
        self._task = self.pool.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await asyncio.wait_for(self.pool.loop.create_connection(lambda: self, self.host, self.port,
                                                                    ssl=tls.for_address(self.address)),
                                   self.pool.connect_timeout)
        except (TimeoutError, OSError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            self._lost(f"connect failed: {detail}")

    def _greeted(self, replies: list[bytes]) -> None:
        if replies[0][:1] in (b"-", b"!"):
            text = replies[0][1:].strip().decode(errors="replace")
            self.abort(f"{'HELLO 3' if self.protocol == 3 else 'AUTH'} refused: {text}")

    def _got_id(self, replies: list[bytes]) -> None:
        if replies[0][:1] == b":":
            self.redis_id = replies[0][1:].strip()

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport
        if self.state == CLOSED:
            transport.abort()
            return
        set_nodelay(transport)
        self.transport = transport
        self.state = READY
        if self.out:
            transport.write(b"".join(self.out))
            self.out.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._lost(f"connection lost: {exc}" if exc else "connection closed by the server")

    def close(self) -> None:
        """Close it on purpose: nobody is told (its user is the caller)."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.on_lost = None
        self.waiting.clear()
        self.disarm()
        if self.transport is not None:
            self.transport.close()
        elif self._task is not None:
            self._task.cancel()
        self.pool._gone(self)

    def abort(self, reason: str) -> None:
        """Drop it now (its replies can no longer be trusted, or will never come); ``on_lost`` is told."""
        transport = self.transport
        self._lost(reason)
        if transport is not None:
            transport.abort()

    def _lost(self, reason: str) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.waiting.clear()
        self.disarm()
        self.pool._gone(self)  # a connect still in flight finds the lease closed and aborts
        log.info("lease_lost", group=self.group, addr=self.address, reason=reason)
        cb, self.on_lost = self.on_lost, None
        if cb is not None:
            cb(self, resp.error(f"ERR backend {self.group} {self.address} {reason}"))

    # --- requests and replies -------------------------------------------------------------------

    def send(self, raw: bytes, on_replies: OnReplies, replies: int = 1) -> None:
        """Write ``raw`` (``replies`` requests); ``on_replies`` gets their raw replies, in order."""
        self.waiting.append([replies, [], on_replies])
        if self.transport is not None:
            self.transport.write(raw)
        else:
            self.out.append(raw)

    def write(self, raw: bytes) -> None:
        """Write requests whose replies go to the sink (pub/sub)."""
        if self.transport is not None:
            self.transport.write(raw)
        else:
            self.out.append(raw)

    def arm(self, seconds: float) -> None:
        """Abort unless every reply awaited now has arrived within ``seconds`` (blocking commands never arm it)."""
        self.disarm()
        self._timer = self.pool.loop.call_later(seconds, self.abort, f"timeout: no reply within {seconds:g}s")

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        n = len(buf)
        p = 0
        stack = self._stack
        try:
            while p < n and self.state != CLOSED:
                end, complete = resp.scan_reply(buf, self._scan if stack else p, n, stack)
                if not complete:
                    self._scan = end
                    break
                raw = bytes(buf[p:end])
                p = end
                waiting = self.waiting
                if waiting and raw[:1] != b">":
                    entry = waiting[0]
                    entry[1].append(raw)
                    entry[0] -= 1
                    if not entry[0]:
                        waiting.popleft()
                        if not waiting:
                            self.disarm()
                        entry[2](entry[1])
                elif self.sink is not None:
                    self.sink(self, raw)
                else:
                    log.warning("lease_unsolicited_reply", group=self.group, addr=self.address, head=raw[:60])
        except (ValueError, IndexError, resp.ProtocolError) as exc:
            self.abort(f"protocol error from Redis: {exc}")
            return
        if stack:
            self._scan -= p
        del buf[:p]


class LeasePool:
    """Every lease of one worker: the idle ones per (master, protocol), and the caps."""

    def __init__(self, loop: asyncio.AbstractEventLoop, password: str | None, max_total: int, max_per_client: int,
                 connect_timeout: float = 2.0):
        self.loop = loop
        self.password = password
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.connect_timeout = connect_timeout
        self.idle: dict[tuple[str, int], list[Lease]] = {}
        self.leases: set[Lease] = set()  # every lease not closed, idle or lent
        self.masters: set[str] | None = None  # current master addresses (None: no table applied yet)
        self.worker_error = resp.error(
            f"ERR max number of leased backend connections reached (kvstore-proxy --max-leases {max_total})")
        self.client_error = resp.error(
            "ERR max number of leased backend connections per client reached "
            f"(kvstore-proxy --max-leases-per-client {max_per_client})")

    def acquire(self, holder: Any, group: str, address: str, protocol: int) -> Lease | bytes:
        """A lease to ``address`` speaking ``protocol`` (RESP 2 or 3), or the error reply to send instead.

        ``holder`` (a ClientState, or None for the proxy's own short errands) is counted against
        the per-client cap until the lease is given back or closed.
        """
        if holder is not None and holder.leases >= self.max_per_client:
            return self.client_error
        idle = self.idle.get((address, protocol))
        lease = idle.pop() if idle else None
        if lease is None:
            if len(self.leases) >= self.max_total and not self._evict_idle():
                log.warning("lease_cap_reached", max_leases=self.max_total, group=group, addr=address)
                return self.worker_error
            lease = Lease(self, group, address, protocol)
            self.leases.add(lease)
            lease.start()
        lease.holder = holder
        if holder is not None:
            holder.leases += 1
        return lease

    def release(self, lease: Lease) -> None:
        """Take back a lease in a clean state (nothing awaited, no MULTI, WATCH or subscription)."""
        self._unhold(lease)
        lease.on_lost = None
        lease.sink = None
        if lease.state == CLOSED:
            return
        key = (lease.address, lease.protocol)
        idle = self.idle.setdefault(key, [])
        if lease.waiting or len(idle) >= IDLE_PER_MASTER or (self.masters is not None
                                                             and lease.address not in self.masters):
            lease.close()
            return
        idle.append(lease)

    def set_masters(self, masters: set[str]) -> None:
        """The table changed: idle leases to nodes that are no longer masters are closed."""
        self.masters = masters
        for (address, _), idle in list(self.idle.items()):
            if address not in masters:
                for lease in list(idle):
                    lease.close()

    def _evict_idle(self) -> bool:
        """At the cap: close the longest-idle lease of the fullest idle list to make room."""
        idle = max(self.idle.values(), key=len, default=None)
        if not idle:
            return False
        idle[0].close()  # removes itself from the list and from ``leases``
        return True

    def _unhold(self, lease: Lease) -> None:
        holder, lease.holder = lease.holder, None
        if holder is not None:
            holder.leases -= 1

    def _gone(self, lease: Lease) -> None:
        self.leases.discard(lease)
        self._unhold(lease)
        idle = self.idle.get((lease.address, lease.protocol))
        if idle and lease in idle:
            idle.remove(lease)

    def close_all(self) -> None:
        for lease in list(self.leases):
            lease.close()
