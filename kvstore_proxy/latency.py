"""The proxy's latency figures: LATENCY LATEST/HISTORY/RESET events and per-command latency histograms.

Both are fed by :meth:`stats.SlowLog.add`, which the reply path calls only for requests slower
than the worker's threshold: with ``--latency-monitor-threshold 0`` and no ``--latency-tracking``
(the defaults) they cost a request nothing. Both are plain data that merges across the workers
of one proxy (``to_json``/``merge``), so LATENCY and INFO answer for the whole proxy.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

from kvstore_proxy.commands import all_specs

HISTORY_LEN = 160  # samples kept per event, as Redis's LATENCY_TS_LEN
PERCENTILES = (50.0, 99.0, 99.9)  # Redis's latency-tracking-info-percentiles default

# Redis records a slow command under "fast-command" when the command is flagged fast. These are
# the only events the proxy records.
EVENTS = ("command", "fast-command")
_FAST = frozenset(s.name.decode() for s in all_specs() if "fast" in s.flags)


def event_for(command: str) -> str:
    """The latency event a slow ``command`` (a commandstats name) is recorded under."""
    return "fast-command" if command in _FAST else "command"


class LatencyEvents:
    """Per event, the worst latency of each second (the last 160 of them) and the all-time worst.

    Like Redis's latency monitor: a sample is taken when a request took at least ``threshold_ms``
    (0 turns the monitor off), in whole milliseconds, stamped with the second it ended in.
    """

    def __init__(self, threshold_ms: int):
        self.threshold_ms = threshold_ms
        self.events: dict[str, tuple[deque[list[int]], int]] = {}

    def add(self, event: str, ms: int, now: float | None = None) -> None:
        ts = int(time.time() if now is None else now)
        entry = self.events.get(event)
        if entry is None:
            samples: deque[list[int]] = deque(maxlen=HISTORY_LEN)
            self.events[event] = (samples, ms)
        else:
            samples, worst = entry
            if ms > worst:
                self.events[event] = (samples, ms)
        if samples and samples[-1][0] == ts:
            samples[-1][1] = max(samples[-1][1], ms)
        else:
            samples.append([ts, ms])

    def latest(self) -> list[tuple[str, int, int, int]]:
        """LATENCY LATEST: (event, time of the latest sample, its latency, all-time max), by name."""
        return [(name, samples[-1][0], samples[-1][1], worst)
                for name, (samples, worst) in sorted(self.events.items()) if samples]

    def history(self, event: str) -> list[tuple[int, int]]:
        entry = self.events.get(event)
        return [(ts, ms) for ts, ms in entry[0]] if entry else []

    def reset(self, events: list[str] | None = None) -> int:
        """Forget the named events (all without names); the number of events that existed."""
        if events is None:
            n = len(self.events)
            self.events.clear()
            return n
        return sum(self.events.pop(e, None) is not None for e in set(events))

    def to_json(self) -> dict[str, Any]:
        return {name: {"samples": [list(s) for s in samples], "max": worst}
                for name, (samples, worst) in self.events.items()}

    @classmethod
    def merge(cls, parts: list[dict[str, Any]]) -> LatencyEvents:
        """The events of several workers as one: each second's worst, the worst ever."""
        out = cls(0)
        for part in parts:
            for name, data in part.items():
                per_second: dict[int, int] = {}
                entry = out.events.get(name)
                worst = int(data["max"])
                if entry is not None:
                    per_second.update((ts, ms) for ts, ms in entry[0])
                    worst = max(worst, entry[1])
                for ts, ms in data["samples"]:
                    per_second[int(ts)] = max(int(ms), per_second.get(int(ts), 0))
                samples = deque(([ts, per_second[ts]] for ts in sorted(per_second)), maxlen=HISTORY_LEN)
                out.events[name] = (samples, worst)
        return out


# A bucket (Histograms.record) is the top 8 bits of the value in ns and their shift: under 1%
# apart, like HDR's 2 significant digits.


def _lower_ns(bucket: int) -> int:
    """The lowest value of nanoseconds that falls in ``bucket``."""
    shift = bucket >> 8
    return bucket if shift == 0 else (bucket & 0xFF) << shift


def _upper_ns(bucket: int) -> int:
    """The highest value of nanoseconds that falls in ``bucket``."""
    shift = bucket >> 8
    if shift == 0:
        return bucket
    return (((bucket & 0xFF) + 1) << shift) - 1


class Histograms:
    """Per command, how many requests took how long (``--latency-tracking``): INFO latencystats and
    LATENCY HISTOGRAM, measured from a request's arrival to its reply, as the client sees it."""

    def __init__(self) -> None:
        self.commands: dict[str, dict[int, int]] = {}

    def record(self, command: str, seconds: float) -> None:
        # Every request when tracking is on: _bucket is inlined.
        ns = int(seconds * 1e9)
        shift = ns.bit_length() - 8
        b = (shift << 8) | (ns >> shift) if shift > 0 else ns
        counts = self.commands.get(command)
        if counts is None:
            counts = self.commands[command] = {}
        counts[b] = counts.get(b, 0) + 1

    def reset(self) -> None:
        self.commands.clear()

    def percentiles(self, command: str, wanted: tuple[float, ...] = PERCENTILES) -> list[float]:
        """The latency in microseconds under which ``wanted`` percent of the requests fell."""
        counts = self.commands.get(command) or {}
        total = sum(counts.values())
        out = []
        for p in wanted:
            rank = max(1, math.ceil(p * total / 100 - 1e-9))
            seen = 0
            value = 0
            for b in sorted(counts):
                seen += counts[b]
                if seen >= rank:
                    value = _upper_ns(b)
                    break
            out.append(value / 1000.0)
        return out

    def cumulative(self, command: str) -> tuple[int, list[tuple[int, int]]]:
        """LATENCY HISTOGRAM's shape: the calls, then (bucket upper bound in µs, requests at or
        under it) for each power-of-two microsecond bucket that got requests."""
        counts = self.commands.get(command) or {}
        per_bucket: dict[int, int] = {}
        for b, n in counts.items():
            low_us = max(1, -(-_lower_ns(b) // 1000))
            edge = 1 << (low_us - 1).bit_length()  # the power of two at or above it
            per_bucket[edge] = per_bucket.get(edge, 0) + n
        out = []
        seen = 0
        for edge in sorted(per_bucket):
            seen += per_bucket[edge]
            out.append((edge, seen))
        return seen, out

    def to_json(self) -> dict[str, dict[str, int]]:
        return {name: {str(b): n for b, n in counts.items()} for name, counts in self.commands.items()}

    @classmethod
    def merge(cls, parts: list[dict[str, dict[str, int]]]) -> Histograms:
        out = cls()
        for part in parts:
            for name, counts in part.items():
                mine = out.commands.setdefault(name, {})
                for b, n in counts.items():
                    mine[int(b)] = mine.get(int(b), 0) + int(n)
        return out
