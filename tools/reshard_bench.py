"""Measure resharding the way an operator meets it (``make bench-reshard``; README "Resharding while serving").

Starts ZooKeeper, three redis-servers and one kvstore-proxy (loopback, free ports), puts N keys of
100 bytes on groups g1 and g2, then:

1. **speed**: ``kvstore-admin group add`` g3, then ``kvstore-admin rebalance`` timed from start to
   exit (keys/s = keys moved / that time), and the way back (``rebalance --drain g3``);
2. **serving**: redis-benchmark, 50 connections, SET and GET of those keys through the proxy (every
   slot: moving and not); ops/s and the p99 of all requests (the runs' latency distributions merged)
   over a window without a reshard, then over the rebalance (start to exit);
3. **big key**: a hash of 1,000,000 fields with a TTL, written to by a client through the proxy
   while its slot moves; PING latency on the source and the target all along (the longest stall),
   every acknowledged write checked afterwards and the TTL kept.

Prints the figures and writes them as JSON (``--out``, default bench/results/reshard.json).
Usage: python tools/reshard_bench.py [--keys 600000] [--only speed,serving,bigkey] [--batch N ...]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvstore_admin.processes import (  # noqa: E402
    LocalProcess,
    require_binary,
    start_proxy,
    start_redis,
    start_zookeeper,
)
from kvstore_cluster.model import Group, Groups, Meta, SlotTable, even_split  # noqa: E402
from kvstore_cluster.slots import key_slot  # noqa: E402
from kvstore_cluster.store import ClusterStore, connect  # noqa: E402

ADMIN = [sys.executable, "-c", "from kvstore_admin.cli import main; main()"]
CLUSTER = "bench"
VALUE = b"v" * 100


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def admin(zk: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ADMIN, "--zk", zk, "--cluster", CLUSTER, *args], capture_output=True, text=True)


def timed_admin(zk: str, *args: str) -> tuple[float, dict[str, Any]]:
    began = time.monotonic()
    run = admin(zk, *args, "--json")
    wall = time.monotonic() - began
    if run.returncode != 0:
        raise SystemExit(f"kvstore-admin {' '.join(args)} failed ({run.returncode}): {run.stderr}{run.stdout}")
    return wall, json.loads(run.stdout)


def fill(ports: dict[str, int], owners: tuple[str | None, ...], keys: int) -> None:
    """``keys`` keys of 100 bytes, each written to its owner's master (redis-cli --pipe per master)."""
    procs = {g: subprocess.Popen(["redis-cli", "-p", str(p), "--pipe"], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL) for g, p in ports.items()}
    chunks: dict[str, list[bytes]] = {g: [] for g in ports}
    for i in range(keys):
        k = b"key:%012d" % i  # redis-benchmark's -r names: key:__rand_int__
        g = owners[key_slot(k)]
        assert g is not None
        chunks[g].append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$100\r\n%s\r\n" % (len(k), k, VALUE))
        if len(chunks[g]) == 10_000:
            procs[g].stdin.write(b"".join(chunks[g]))  # type: ignore[union-attr]
            chunks[g] = []
    for g, proc in procs.items():
        proc.stdin.write(b"".join(chunks[g]))  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait()


# --- redis-benchmark's report of one run: its requests, rate and latency distribution ------------

class ReportError(ValueError):
    """redis-benchmark printed something other than one complete test's report."""


@dataclass(frozen=True)
class RunReport:
    """One redis-benchmark run of one test, as its report (neither --csv nor -q) states it."""

    test: str
    requests: int
    rps: float  # its requests over its own time from the first request to the last reply
    p99_ms: float  # redis-benchmark's p99 of this run alone
    # Points of its cumulative distribution: (latency in ms, requests that took at most that long),
    # ascending in both, from (its minimum, 0) to (at least its maximum, requests).
    cdf: tuple[tuple[float, int], ...]

    def at_most(self, ms: float) -> float:
        """Requests of this run that took at most ``ms``: linear between the two known points around it."""
        values = [v for v, _ in self.cdf]
        i = bisect.bisect_right(values, ms)
        if i == 0:
            return 0.0
        if i == len(values):
            return float(self.requests)
        (v0, c0), (v1, c1) = self.cdf[i - 1], self.cdf[i]
        return c0 + (c1 - c0) * (ms - v0) / (v1 - v0)


_TITLE = re.compile(r"====== (.+) ======")
_COMPLETED = re.compile(r"\s*(\d+) requests completed in [0-9.]+ seconds")
_THROUGHPUT = re.compile(r"\s*throughput summary: ([0-9]+\.[0-9]+) requests per second")
_POINT = re.compile(r"([0-9]+\.[0-9]+)% <= ([0-9]+\.[0-9]+) milliseconds \(cumulative count ([0-9]+)\)")
_SUMMARY_COLUMNS = ["avg", "min", "p50", "p95", "p99", "max"]
_SECTIONS = ("Latency by percentile distribution:", "Cumulative distribution of latencies:")


def _report_lines(text: str) -> list[str]:
    return re.split(r"\r\n|\r|\n", text)


def parse_report(text: str) -> RunReport:
    """The report redis-benchmark 7 prints for one test (``-t set``, or one custom command).

    Both of its latency tables are read: "Latency by percentile distribution" (points that get
    denser towards the tail) and "Cumulative distribution of latencies" (every 0.1 ms up to 2 ms,
    then every 1 ms); each line is an exact point of the run's cumulative distribution (a latency
    and how many requests took at most that long). The summary's minimum adds the point (min, 0).
    Anything else (an error, a truncated report, a second test) raises ReportError.
    """
    lines = _report_lines(text)
    titles: list[str] = []
    completed: list[int] = []
    throughput: list[float] = []
    tables: dict[str, list[tuple[float, float, int]]] = {}
    summary: list[dict[str, float]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := _TITLE.fullmatch(line):
            titles.append(m.group(1))
        elif m := _COMPLETED.fullmatch(line):
            completed.append(int(m.group(1)))
        elif m := _THROUGHPUT.fullmatch(line):
            throughput.append(float(m.group(1)))
        elif line in _SECTIONS:
            if line in tables:
                raise ReportError(f"redis-benchmark printed {line!r} twice")
            rows = tables[line] = []
            i += 1
            while i < len(lines) and lines[i]:
                m = _POINT.fullmatch(lines[i])
                if not m:
                    raise ReportError(f"malformed line under {line!r} in redis-benchmark's report: {lines[i]!r}")
                rows.append((float(m.group(1)), float(m.group(2)), int(m.group(3))))
                i += 1
            if i == len(lines) or not rows:
                raise ReportError(f"redis-benchmark's report ends in or has nothing under {line!r}")
        elif line.strip() == "latency summary (msec):":
            # The values' line must end (a line follows it), or a cut inside its last number would pass.
            header, values = (lines[i + 1].split(), lines[i + 2].split()) if i + 3 < len(lines) else ([], [])
            if header != _SUMMARY_COLUMNS or len(values) != len(header):
                raise ReportError(f"unexpected latency summary in redis-benchmark's report: {header!r} {values!r}")
            try:
                summary.append(dict(zip(header, map(float, values), strict=True)))
            except ValueError:
                raise ReportError(f"non-numeric latency summary in redis-benchmark's report: {values!r}") from None
            i += 2
        i += 1
    found = {"a test title": len(titles), "a request count": len(completed), "a throughput summary":
             len(throughput), "a latency summary": len(summary), **{name: int(name in tables) for name in _SECTIONS}}
    for what, times in found.items():
        if times != 1:
            raise ReportError(f"redis-benchmark's report has {what!r} {times} times, not once: {text.strip()[:300]!r}")
    requests, rps, lows = completed[0], throughput[0], summary[0]
    if requests <= 0 or rps <= 0:
        raise ReportError(f"redis-benchmark reports {requests} requests at {rps} requests per second")
    percentiles, cumulative = tables[_SECTIONS[0]], tables[_SECTIONS[1]]
    if percentiles[-1][0] != 100.0 or percentiles[-1][2] != requests or cumulative[-1][2] != requests:
        raise ReportError(f"redis-benchmark's latency tables end at {percentiles[-1]} and {cumulative[-1]}, "
                          f"not at the {requests} requests it completed")
    points: list[tuple[float, int]] = sorted({(lows["min"], 0)} | {(ms, n) for _, ms, n in percentiles + cumulative})
    for (v0, c0), (v1, c1) in zip(points, points[1:], strict=False):
        if c1 < c0 or v1 == v0:
            raise ReportError(f"redis-benchmark's latency tables contradict each other: {v0} ms has {c0} "
                              f"requests at most, {v1} ms has {c1}")
    return RunReport(titles[0], requests, rps, lows["p99"], tuple(points))


def merged_quantile(runs: Sequence[RunReport], q: float) -> float:
    """The latency (ms) that a fraction ``q`` of all the requests of ``runs`` together took at most.

    A run's cumulative count is known at its points; between two of them its requests are taken as
    spread evenly (linear interpolation), which is exact at every point and off by less than the
    gap between two points elsewhere. The sum over the runs is then linear between any two
    neighbours of the union of their points: the quantile is found among those by bisection and
    interpolated linearly inside its piece. Runs weigh by their requests: this is the quantile of
    the requests, not an average of the runs' percentiles.
    """
    if not runs or not 0 < q < 1:
        raise ValueError("a quantile strictly between 0 and 1 of one run or more")
    target = q * sum(r.requests for r in runs)
    values = sorted({v for r in runs for v, _ in r.cdf})

    def count(ms: float) -> float:
        return sum(r.at_most(ms) for r in runs)

    i = bisect.bisect_left(values, target, key=count)  # the first point at which target requests are done
    if i == 0:
        return values[0]
    v0, v1 = values[i - 1], values[i]
    c0, c1 = count(v0), count(v1)
    return v0 + (v1 - v0) * (target - c0) / (c1 - c0)


def run_benchmark(port: int, *args: str, timeout: float = 120) -> RunReport:
    """One redis-benchmark run of one test against 127.0.0.1:``port``, its report parsed."""
    binary = require_binary("redis-benchmark", "redis-tools")
    # --precision 3: the histogram's significant digits (3 is redis-benchmark 7's default, whatever its
    # --help says); fixed here so the resolution cannot change under the figures.
    out = subprocess.run([binary, "-h", "127.0.0.1", "-p", str(port), "--precision", "3", *args],
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise ReportError(f"redis-benchmark {' '.join(args)} exited with {out.returncode}: "
                          f"{out.stderr.strip()[-500:]} {out.stdout.strip()[-300:]}")
    return parse_report(out.stdout)


# --- the client load: redis-benchmark (50 connections, GET and SET alternating runs of ~0.5 s) --------

class Load:
    """redis-benchmark runs back to back through the proxy, each timestamped: windows are cut from them."""

    def __init__(self, port: int, keys: int):
        self.port, self.keys = port, keys
        self.runs: list[tuple[float, float, RunReport]] = []
        self.requests = 20_000
        self.failure: str | None = None  # why the load stopped before it was told to
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                test = ("set", "get")[n % 2]
                n += 1
                began = time.monotonic()
                report = run_benchmark(self.port, "-c", "50", "-n", str(self.requests), "-r", str(self.keys),
                                       "-d", "100", "-t", test)
                ended = time.monotonic()
                if report.test != test.upper():
                    raise ReportError(f"redis-benchmark -t {test} reported a test named {report.test!r}")
                self.runs.append((began, ended, report))
                # About half a second per run at the rate just seen.
                self.requests = max(2_000, int(report.rps * 0.5))
        except Exception as e:  # a thread's exception would vanish: serving() raises it
            self.failure = f"the client load stopped: {e}"

    def window(self, name: str, start: float, end: float) -> dict[str, Any]:
        """The figures of the runs that lie wholly inside [start, end]."""
        runs = [(b, e, r) for b, e, r in self.runs if start <= b and e <= end]
        if not runs:
            raise SystemExit(f"no redis-benchmark run lies wholly inside the {name} window "
                             f"({end - start:.1f} s): no figure for it")
        # Throughput: each run's own rate, weighed by its wall time.
        seconds = sum(e - b for b, e, _ in runs)
        ops = sum(r.rps * (e - b) for b, e, r in runs) / seconds
        run_p99 = [r.p99_ms for _, _, r in runs]
        return {"ops_per_second": round(ops), "p99_ms": round(merged_quantile([r for _, _, r in runs], 0.99), 3),
                "worst_run_p99_ms": max(run_p99), "median_run_p99_ms": statistics.median(run_p99),
                "runs": len(runs), "requests": sum(r.requests for _, _, r in runs)}


class Pinger:
    """PING a server in a loop; the longest round trip is the longest stall a client saw."""

    def __init__(self, port: int):
        self.client = redis.Redis(port=port, socket_timeout=30)
        self.longest = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            self.client.ping()
            self.longest = max(self.longest, time.monotonic() - t)
            time.sleep(0.001)


class Cluster:
    def __init__(self, base: Path, keys: int):
        self.base = base
        self.procs: list[LocalProcess] = []
        self.zk = start_zookeeper(base / "zk")
        self.procs.append(self.zk)
        self.masters = {f"g{i}": start_redis(base / f"g{i}") for i in (1, 2, 3)}
        self.procs.extend(self.masters.values())
        client = connect(self.zk.address)
        model = Groups(tuple(Group(g, self.masters[g].address, ()) for g in ("g1", "g2")))
        table = SlotTable(tuple(even_split(model.ids())))
        ClusterStore(client, CLUSTER).create(Meta("cache", time.time()), model, table)
        client.stop()
        client.close()
        began = time.monotonic()
        fill({g: self.masters[g].port for g in ("g1", "g2")}, table.owners(), keys)
        print(f"{keys:,} keys of 100 bytes on g1 and g2 in {time.monotonic() - began:.1f}s", flush=True)
        self.proxy = start_proxy(self.zk.address, CLUSTER, base / "proxy.log")
        self.procs.append(self.proxy)

    def add_g3(self) -> None:
        run = admin(self.zk.address, "group", "add", "--master", self.masters["g3"].address)
        if run.returncode != 0:
            raise SystemExit(f"group add failed: {run.stderr}")

    def remove_g3(self, tuning: list[str]) -> tuple[float, dict[str, Any]]:
        back = timed_admin(self.zk.address, "rebalance", "--drain", "g3", *tuning)
        run = admin(self.zk.address, "group", "remove", "g3")
        if run.returncode != 0:
            raise SystemExit(f"group remove failed: {run.stderr}")
        return back

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def speed(c: Cluster, tuning: list[str], rounds: int) -> dict[str, Any]:
    runs = []
    for _ in range(rounds):
        c.add_g3()
        load = loadavg()
        wall, out = timed_admin(c.zk.address, "rebalance", *tuning)
        back_wall, back = c.remove_g3(tuning)
        runs.append({"keys_moved": out["keys_moved"], "wall_seconds": round(wall, 3),
                     "keys_per_second": round(out["keys_moved"] / wall), "executor_seconds": out["seconds"],
                     "scan_passes": out["scan_passes"], "steps": out["steps"],
                     "longest_stall_ms": out["longest_stall_ms"], "load": load,
                     "drain_keys_per_second": round(back["keys_moved"] / back_wall)})
        print(f"rebalance: {out['keys_moved']:,} keys in {wall:.2f}s start to exit = "
              f"{out['keys_moved'] / wall:,.0f} keys/s ({out['steps']} steps, {out['scan_passes']} SCAN passes, "
              f"longest stall {out['longest_stall_ms']} ms; drain back {back['keys_moved'] / back_wall:,.0f} "
              f"keys/s; load {load})", flush=True)
    best = max(runs, key=lambda r: r["keys_per_second"])
    return {"runs": runs, "keys_per_second": best["keys_per_second"],
            "median_keys_per_second": sorted(r["keys_per_second"] for r in runs)[len(runs) // 2]}


def serving(c: Cluster, keys: int, tuning: list[str], idle_seconds: float) -> dict[str, Any]:
    load = Load(c.proxy.port, keys)
    load.thread.start()
    time.sleep(2.0)  # warm, and the run size adapted to the rate
    idle_start = time.monotonic()
    time.sleep(idle_seconds)
    idle_end = time.monotonic()
    if load.failure:
        raise SystemExit(load.failure)
    c.add_g3()
    start = time.monotonic()
    wall, result = timed_admin(c.zk.address, "rebalance", *tuning)
    end = time.monotonic()
    load.stop.set()
    load.thread.join(120)
    if load.failure:
        raise SystemExit(load.failure)
    before = load.window("idle", idle_start, idle_end)
    during = load.window("rebalance", start, end)
    c.remove_g3(tuning)
    figures = {
        "client": "redis-benchmark -c 50 -d 100 -r KEYS --precision 3, SET and GET runs alternating (~0.5 s "
                  "each); a run counts in a window when it lies wholly inside it; ops/s = the runs' own rates "
                  "weighed by their wall time; p99_ms = the 99th percentile of every request of the window (the "
                  "runs' latency distributions merged by request count); worst_run_p99_ms and median_run_p99_ms "
                  "= of the runs' own p99s",
        "before": before, "during": during, "reshard_seconds": round(wall, 2), "keys_moved": result["keys_moved"],
        # Both windows hold a run (window() says so otherwise), and a run has requests and latencies > 0.
        "throughput_ratio": round(during["ops_per_second"] / before["ops_per_second"], 3),
        "p99_ratio": round(during["p99_ms"] / before["p99_ms"], 2),
        "worst_run_p99_ratio": round(during["worst_run_p99_ms"] / before["worst_run_p99_ms"], 2),
    }
    print(f"serving: {before['ops_per_second']:,} ops/s, p99 {before['p99_ms']} ms of {before['requests']:,} "
          f"requests without a reshard; {during['ops_per_second']:,} ops/s, p99 {during['p99_ms']} ms of "
          f"{during['requests']:,} requests during the rebalance ({figures['throughput_ratio']:.0%} of the "
          f"throughput, p99 x{figures['p99_ratio']}; worst run's p99 {before['worst_run_p99_ms']} -> "
          f"{during['worst_run_p99_ms']} ms, x{figures['worst_run_p99_ratio']})", flush=True)
    return figures


def bigkey(c: Cluster, elements: int) -> dict[str, Any]:
    store_client = connect(c.zk.address)
    owners = ClusterStore(store_client, CLUSTER).read_slots().value.owners()
    store_client.stop()
    store_client.close()
    key = b"big:{hash}"
    slot = key_slot(key)
    source, target = owners[slot], ("g2" if owners[slot] == "g1" else "g1")
    assert source is not None
    src = redis.Redis(port=c.masters[source].port, socket_timeout=60)
    pipe = src.pipeline(transaction=False)
    for i in range(0, elements, 1000):
        pipe.hset(key, mapping={b"f%d" % j: b"x" * 20 for j in range(i, min(elements, i + 1000))})
    pipe.execute()
    src.expire(key, 3600)
    pingers = [Pinger(c.masters[source].port), Pinger(c.masters[target].port)]
    for p in pingers:
        p.thread.start()
    acked: list[int] = []
    stop = threading.Event()
    proxy = redis.Redis(port=c.proxy.port, socket_timeout=30)

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                proxy.hset(key, b"w%d" % n, n)
                acked.append(n)
            except redis.exceptions.TryAgainError:
                pass
    time.sleep(2.0)  # the PING baseline: what this machine's scheduling alone costs
    idle = [p.longest for p in pingers]
    for p in pingers:
        p.longest = 0.0
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(0.5)
    wall, result = timed_admin(c.zk.address, "reshard", "--slots", str(slot), "--to", target)
    time.sleep(0.3)
    stop.set()
    thread.join(30)
    for p in pingers:
        p.stop.set()
        p.thread.join(30)
    dst = redis.Redis(port=c.masters[target].port, socket_timeout=60)
    lost = [n for n in acked if dst.hget(key, b"w%d" % n) != str(n).encode()]
    figures = {
        "elements": elements, "type": "hash", "seconds": round(wall, 2), "writes_acknowledged": len(acked),
        "writes_lost": len(lost), "on_source_after": bool(src.exists(key)), "fields_on_target": dst.hlen(key),
        "ttl_kept": 0 < dst.ttl(key) <= 3600, "longest_ping_source_ms": round(pingers[0].longest * 1000, 1),
        "longest_ping_target_ms": round(pingers[1].longest * 1000, 1),
        "longest_ping_before_move_ms": round(max(idle) * 1000, 1),
        "executor_longest_stall_ms": result["longest_stall_ms"],
    }
    figures["longest_stall_ms"] = max(figures["longest_ping_source_ms"], figures["longest_ping_target_ms"])
    print(f"big key: a hash of {elements:,} fields moved in {wall:.1f}s; longest PING: source "
          f"{figures['longest_ping_source_ms']} ms, target {figures['longest_ping_target_ms']} ms (before the move: "
          f"{figures['longest_ping_before_move_ms']} ms); "
          f"{len(acked)} writes acknowledged during the move, {len(lost)} lost; TTL kept: {figures['ttl_kept']}",
          flush=True)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=600_000)
    ap.add_argument("--only", default="speed,serving,bigkey")
    ap.add_argument("--rounds", type=int, default=3, help="speed runs (the best and the median are reported)")
    ap.add_argument("--idle-seconds", type=float, default=10.0,
                    help="the window without a reshard the serving figures compare with")
    ap.add_argument("--big-elements", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reshard.json")
    ap.add_argument("tuning", nargs="*", help="extra rebalance options, after --: --batch 1000 --parallel 2 ...")
    args = ap.parse_args()
    parts = args.only.split(",")
    base = Path(tempfile.mkdtemp(prefix="kvstore-reshard-bench-"))
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
                   f"{platform.python_version()}, Redis {redis_version}",
        "keys": args.keys, "tuning": args.tuning, "load_at_start": loadavg(),
    }
    c = Cluster(base, args.keys)
    try:
        if "speed" in parts:
            result["speed"] = speed(c, args.tuning, args.rounds)
        if "serving" in parts:
            result["serving"] = serving(c, args.keys, args.tuning, args.idle_seconds)
        if "bigkey" in parts:
            result["big_key"] = bigkey(c, args.big_elements)
    finally:
        c.stop()
    result["load_at_end"] = loadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
