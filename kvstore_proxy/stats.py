"""The proxy's own counters of one worker: connections, error replies by code, the ops/s meter, the slow log."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from kvstore_proxy.latency import LatencyEvents, event_for

if TYPE_CHECKING:
    from kvstore_proxy.datapath import Reply

ERROR_CODES_MAX = 128  # distinct error codes counted, as Redis bounds its errorstats


class Stats:
    """Counters of one worker process (INFO clients and stats sum them over the workers)."""

    def __init__(self) -> None:
        self.connections_received = 0
        self.rejected_connections = 0
        self.protocol_errors = 0
        self.idle_closed = 0
        self.errors: dict[str, int] = {}  # error replies by code: INFO errorstats

    def count_error(self, reply: bytes | bytearray) -> None:
        """One more error reply (``-CODE message``), counted by code as Redis's errorstats.

        Redis takes the code up to the first space within 32 bytes, else counts ``ERR``.
        """
        space = reply.find(b" ", 1, 32)
        code = bytes(reply[1:space]).decode(errors="replace") if space > 1 else "ERR"
        errors = self.errors
        if code in errors:
            errors[code] += 1
        elif len(errors) < ERROR_CODES_MAX:
            errors[code] = 1


class OpsMeter:
    """instantaneous_ops_per_sec as Redis computes it: the mean of the last 16 rates sampled 100 ms apart."""

    def __init__(self) -> None:
        self.rates: deque[float] = deque(maxlen=16)
        self.last: tuple[float, int] | None = None

    def sample(self, now: float, total: int) -> None:
        last = self.last
        if last is None:
            self.last = (now, total)
        elif now - last[0] >= 0.1:
            self.rates.append((total - last[1]) / (now - last[0]))
            self.last = (now, total)

    def rate(self) -> float:
        return sum(self.rates) / len(self.rates) if self.rates else 0.0


class SlowLog:
    """Where the reply path sends every request slower than the worker's ``slow_threshold``.

    That threshold is the lower of the two this class serves, so a request below both costs one
    comparison and nothing more:

    - the slow log itself (SLOWLOG GET/LEN/RESET), requests over ``slower_than`` seconds, newest
      first; ``add`` only keeps references, the arguments are trimmed as Redis does when SLOWLOG
      GET asks for them;
    - the latency monitor (``events``, LATENCY LATEST/HISTORY) from its threshold in ms.
    """

    def __init__(self, max_len: int, slower_than: float = float("inf"), events: LatencyEvents | None = None):
        self.entries: deque[tuple[int, float, float, list[bytes], str, bytes]] = deque(maxlen=max(0, max_len))
        self.next_id = 0
        self.slower_than = slower_than if max_len > 0 else float("inf")
        self.events = events if events is not None else LatencyEvents(0)
        self._event_from = self.events.threshold_ms / 1000 if self.events.threshold_ms > 0 else float("inf")

    @property
    def threshold(self) -> float:
        """Seconds above which a request must come here."""
        return min(self.slower_than, self._event_from)

    def add(self, r: Reply, seconds: float, session: Any) -> None:
        if seconds >= self._event_from:
            self.events.add(event_for(r.stat.name), int(seconds * 1000))
        if seconds > self.slower_than:
            self.entries.appendleft((self.next_id, time.time(), seconds, r.args, session.addr, session.name))
            self.next_id += 1

    def get(self, count: int) -> list[tuple[int, int, int, list[bytes], bytes, bytes]]:
        out = []
        for i, ts, seconds, args, addr, name in list(self.entries)[: None if count < 0 else count]:
            shown = [a if len(a) <= 128 else a[:128] + b"... (%d more bytes)" % (len(a) - 128) for a in args[:32]]
            if len(args) > 32:
                shown[-1] = b"... (%d more arguments)" % (len(args) - 31)
            out.append((i, int(ts), int(seconds * 1e6), shown, addr.encode(), name))
        return out

    def reset(self) -> None:
        self.entries.clear()
