"""The proxy's latency figures: LATENCY LATEST/HISTORY/RESET events and per-command latency histograms.

The events are fed by :meth:`stats.SlowLog.add`, which the reply path calls only for requests
slower than the worker's threshold (``--latency-monitor-threshold``; 0, the default, is off). The
histograms (``--latency-tracking``, on by default) are counted in C with every reply
(datapath.CommandStat) and only read here. Both are plain data that merges across the workers
of one proxy (``LatencyEvents.to_json``, ``Histograms.of``; ``merge``), so LATENCY and INFO
answer for the whole proxy.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from kvstore_proxy.commands import all_specs
from kvstore_proxy.datapath import LATENCY_BUCKETS, CommandStat

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


class Histograms:
    """Per command, how many replies took how long: INFO latencystats, LATENCY HISTOGRAM and the
    metrics' histograms, measured from a request's arrival to its reply, as the client sees it.

    The counting is done in C where each reply is counted (``CommandStat.hist``, in buckets of
    datapath.LATENCY_BUCKETS); this reads the counts of every worker and adds them up.
    """

    def __init__(self, commands: dict[str, dict[int, int]] | None = None) -> None:
        self.commands: dict[str, dict[int, int]] = commands if commands is not None else {}

    @staticmethod
    def of(stats: Iterable[CommandStat]) -> dict[str, dict[int, int]]:
        """One worker's counts, by command name (what ``merge`` takes, JSON-able)."""
        return {st.name: st.histogram() for st in stats if st.calls}

    def percentiles(self, command: str, wanted: tuple[float, ...] = PERCENTILES) -> list[float]:
        """The latency in microseconds under which ``wanted`` percent of the replies fell: the
        upper bound of the bucket holding that rank, as Redis reports its histogram's."""
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
                    value = LATENCY_BUCKETS[b]
                    break
            out.append(float(value))
        return out

    def cumulative(self, command: str) -> tuple[int, list[tuple[int, int]]]:
        """LATENCY HISTOGRAM's shape: the calls, then (bucket upper bound in µs, replies at or
        under it) for each power-of-two microsecond bucket that got replies."""
        counts = self.commands.get(command) or {}
        per_edge: dict[int, int] = {}
        for b, n in counts.items():
            edge = 1 << (LATENCY_BUCKETS[b] - 1).bit_length()  # a bucket lies under one power of two
            per_edge[edge] = per_edge.get(edge, 0) + n
        out = []
        seen = 0
        for edge in sorted(per_edge):
            seen += per_edge[edge]
            out.append((edge, seen))
        return seen, out

    def at_or_under(self, command: str, bounds_us: Iterable[float]) -> list[int]:
        """Replies that took at most each of ``bounds_us`` (ascending): a bucket counts under a
        bound once all of it is."""
        ordered = sorted((LATENCY_BUCKETS[b], n) for b, n in (self.commands.get(command) or {}).items())
        out = []
        seen = 0
        i = 0
        for bound in bounds_us:
            while i < len(ordered) and ordered[i][0] <= bound:
                seen += ordered[i][1]
                i += 1
            out.append(seen)
        return out

    @classmethod
    def merge(cls, parts: Iterable[dict[str, dict[Any, int]]]) -> Histograms:
        """The counts of several workers as one (keys may be strings: JSON from the siblings)."""
        out = cls()
        for part in parts:
            for name, counts in part.items():
                mine = out.commands.setdefault(name, {})
                for b, n in counts.items():
                    mine[int(b)] = mine.get(int(b), 0) + int(n)
        return out
