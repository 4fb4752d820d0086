"""How fast the key mover goes: full speed while no client uses the sources, ``busy_rate`` keys/s while any does.

A 2-core machine may run the proxies, the servers, the clients and the mover at once: every key
moved costs CPU the clients would have had, and every take blocks its source for its length.
So the mover watches each source's ``total_net_input_bytes`` (``INFO stats``, every
:data:`SAMPLE_SECONDS`) less its own requests. Its own are known to the byte (``Node.sent`` and
``Node.answered``); a request still on its way may or may not have been read when ``INFO`` ran,
so the clients' share is taken at its lowest: received - (ours sent by now - ours answered by
the last sample). Above :data:`BUSY_BYTES_PER_SECOND` of client requests on any source, the
movers are *busy* for :data:`HOLD_SECONDS` (clients come in bursts): takes of at most
:data:`BUSY_BATCH` keys, ``busy_rate`` keys/s in all, SCAN calls of :data:`BUSY_SCAN_COUNT`
:data:`BUSY_SCAN_PAUSE` apart, and steps of at most ``--busy-slots-per-step`` slots (the executor
cuts the step it marks next): a client's request for a key of a marked slot that has not moved
yet costs a take (a MIGRATE blocking its source). Otherwise: no wait, full batches, full steps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("kvstore.ops.pace")

BUSY_RATE = 1_000  # keys/s at most while clients use the sources (0: always full speed; docs/design.md)
BUSY_BYTES_PER_SECOND = 64 << 10  # client requests reaching a source above this: clients are active
BUSY_BATCH = 100  # keys per take while clients are active (each take blocks the source for its length)
SAMPLE_SECONDS = 0.25  # how often each source's traffic is read
FIRST_SAMPLE_SECONDS = 0.05  # the first two readings: clients already there are seen at once
BUSY_SCAN_COUNT = 500  # while busy, per SCAN call (COUNT 2000 blocks a source of 100-byte keys ~1.8 ms)
BUSY_SCAN_PAUSE = 0.0125  # while busy, between two SCAN calls of a pass: 40,000 keys/s read at most
HOLD_SECONDS = 1.0  # busy this long after clients were last seen


@dataclass(frozen=True)
class Sample:
    """One reading of a source: when, its ``total_net_input_bytes``, and our bytes it surely / possibly read."""

    at: float
    received: int
    ours_answered: int  # our requests answered before INFO was sent: surely read
    ours_sent: int  # our requests written before INFO's reply came: possibly read


class Pace:
    """The movers' speed limit, shared by every source of a reshard (``busy_rate`` is for them all)."""

    def __init__(self, busy_rate: int, clock: Callable[[], float] = time.monotonic):
        self.busy_rate = busy_rate
        self.clock = clock
        self.busy_until = 0.0  # clients were seen: busy until then
        self.next = 0.0  # while busy: when the next take may start
        self.last: dict[str, Sample] = {}
        self.judged: set[str] = set()  # sources read twice: their clients' traffic is known

    @property
    def busy(self) -> bool:
        return self.busy_rate > 0 and self.clock() < self.busy_until

    def observe(self, address: str, sample: Sample) -> float | None:
        """A source was read: returns its clients' bytes/s since the last reading, at least (None: no basis yet)."""
        prev, self.last[address] = self.last.get(address), sample
        if prev is None or sample.at <= prev.at or sample.received < prev.received:
            return None  # first reading, or the server restarted (its counters too)
        self.judged.add(address)
        ours = sample.ours_sent - prev.ours_answered
        clients = max(0.0, ((sample.received - prev.received) - ours) / (sample.at - prev.at))
        if clients > BUSY_BYTES_PER_SECOND and self.busy_rate > 0:
            if not self.busy:
                log.info("reshard_paced", node=address, client_bytes_per_second=round(clients),
                         keys_per_second=self.busy_rate)
            self.busy_until = sample.at + HOLD_SECONDS
        return clients

    def batch(self, keys: int) -> int:
        """Keys the next take may carry."""
        return min(keys, BUSY_BATCH) if self.busy else keys

    def delay(self, keys: int) -> float:
        """Book a take of ``keys`` keys: the seconds to wait before it starts."""
        if not self.busy:
            return 0.0
        now = self.clock()
        start = max(self.next, now)
        self.next = start + keys / self.busy_rate
        return start - now

    def scan_count(self, count: int) -> int:
        """Keys the next SCAN call may ask for."""
        return min(count, BUSY_SCAN_COUNT) if self.busy else count

    async def scan_pause(self) -> None:
        """Between two SCAN calls of a pass: a pause while busy."""
        if self.busy:
            await asyncio.sleep(BUSY_SCAN_PAUSE)

    async def admit(self, keys: int) -> None:
        """Wait until a take of ``keys`` keys may start."""
        wait = self.delay(keys)
        if wait > 0:
            await asyncio.sleep(wait)
