"""Limits per user and per client address: connections held and requests per second, refused with an error.

Each worker enforces its share of a limit (``ceil(limit / workers)``): clients are spread over the
workers by the kernel (SO_REUSEPORT), and counting across workers would put a round trip on every
request. A client over a limit is always answered (``-ERR max ...``), never dropped silently: a
connection over its address's limit gets the error and is then closed, as Redis does past
``maxclients``; an AUTH over its user's connection limit is refused and the connection stays
unauthenticated; a request over a rate is refused and the connection stays.

Only sessions with a rate to count leave the fast path (their routes are empty, see acl.py); the
others pay nothing per request.
"""

from __future__ import annotations

import math
import time
from collections import Counter

# A whole token, less the rounding of monotonic clock differences: 0.1 s at 10/s refills one token
# even when ``now - stamp`` comes out as 0.0999999999985.
_ONE_TOKEN = 1.0 - 1e-9


class RateBucket:
    """A token bucket of ``rate`` tokens per second, holding at most one second's worth."""

    __slots__ = ("rate", "tokens", "stamp")

    def __init__(self, rate: float):
        self.rate = rate
        self.tokens = rate
        self.stamp = time.monotonic()

    def take(self, now: float) -> bool:
        tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < _ONE_TOKEN:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


def share(limit: int | None, workers: int) -> int | None:
    """This worker's part of a proxy-wide limit."""
    return None if limit is None else max(1, math.ceil(limit / workers))


class Limits:
    """One worker's counts of connections and its rate buckets, by user name and by client address."""

    def __init__(self, workers: int, per_address_connections: int | None, per_address_rps: int | None):
        self.workers = workers
        self.address_connections = share(per_address_connections, workers)
        self.address_rps = share(per_address_rps, workers)
        self.by_address: Counter[str] = Counter()
        self.by_user: Counter[str] = Counter()
        self._address_buckets: dict[str, RateBucket] = {}
        self._user_buckets: dict[str, tuple[int, RateBucket]] = {}
        self.refused = 0  # requests and connections refused by a limit (INFO, metrics)

    @staticmethod
    def host(addr: str) -> str:
        return addr.rpartition(":")[0] or addr

    def connect(self, addr: str) -> bytes | None:
        """A new client from ``addr``: the error to answer if its address is over its limit."""
        host = self.host(addr)
        if self.address_connections is not None and self.by_address[host] >= self.address_connections:
            self.refused += 1
            return (b"-ERR max number of clients reached for address " + host.encode()
                    + b" (kvstore-proxy --max-clients-per-address)\r\n")
        self.by_address[host] += 1
        return None

    def disconnect(self, addr: str) -> None:
        host = self.host(addr)
        self.by_address[host] -= 1
        if self.by_address[host] <= 0:
            del self.by_address[host]
            self._address_buckets.pop(host, None)

    def login(self, user: str, max_connections: int | None) -> bytes | None:
        """A session becomes ``user``'s: the error to answer if the user holds its connections already."""
        limit = share(max_connections, self.workers)
        if limit is not None and self.by_user[user] >= limit:
            self.refused += 1
            return (b"-ERR max number of clients reached for user '" + user.encode() + b"' ("
                    + str(max_connections).encode() + b" per proxy)\r\n")
        self.by_user[user] += 1
        return None

    def logout(self, user: str) -> None:
        self.by_user[user] -= 1
        if self.by_user[user] <= 0:
            del self.by_user[user]

    def buckets(self, addr: str, user: str, max_rps: int | None) -> tuple[RateBucket, ...]:
        """The rate buckets a session of ``user`` from ``addr`` draws from (empty: no rate applies)."""
        out = []
        if self.address_rps is not None:
            host = self.host(addr)
            bucket = self._address_buckets.get(host)
            if bucket is None:
                bucket = self._address_buckets[host] = RateBucket(self.address_rps)
            out.append(bucket)
        rate = share(max_rps, self.workers)
        if rate is not None:
            kept = self._user_buckets.get(user)
            if kept is None or kept[0] != rate:
                kept = self._user_buckets[user] = (rate, RateBucket(rate))
            out.append(kept[1])
        return tuple(out)

    def over_rate(self, buckets: tuple[RateBucket, ...], user: str) -> bytes | None:
        now = time.monotonic()
        for b in buckets:
            if not b.take(now):
                self.refused += 1
                who = "this address" if b is not self._user_buckets.get(user, (0, None))[1] else f"user '{user}'"
                return (b"-ERR max requests per second reached for " + who.encode()
                        + b"; slow down and retry\r\n")
        return None
