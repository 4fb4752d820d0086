"""Measure ``kvstore-admin import`` the way a user meets it: a source of N keys with a writer running on it.

Starts ZooKeeper, the groups and a source (loopback, free ports), fills the source with N keys of
100 random bytes, starts a writer at --rate writes/s, then:

1. times ``import --cutover`` from start to exit (keys/s = keys / that time) and, while the
   source is still paused, runs ``import --verify --verify-keys all``;
2. on an emptied cluster, runs ``import`` without cutover and measures the lag an application
   would see: a probe key written to the source every 100 ms, polled on its group's master.

Usage: python tools/import_bench.py [--keys 1000000] [--rate 5000] [--replicas 0] [--source-delay 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvstore_admin.processes import LocalProcess, start_redis, start_zookeeper, wait_until  # noqa: E402
from kvstore_cluster.model import Group, Groups, Meta, SlotTable, even_split  # noqa: E402
from kvstore_cluster.slots import key_slot  # noqa: E402
from kvstore_cluster.store import ClusterStore, connect  # noqa: E402

ADMIN = [sys.executable, "-c", "from kvstore_admin.cli import main; main()"]
WRITER = r"""
import os, random, sys, time, redis
port, rate = int(sys.argv[1]), float(sys.argv[2])
r = redis.Redis(port=port, socket_timeout=300)
tick = 0.01
per_tick = max(1, int(rate * tick))
n = 0
t0 = time.monotonic()
while True:
    p = r.pipeline(transaction=False)
    for _ in range(per_tick):
        i = random.randrange(1_000_000)
        kind = n % 5
        if kind == 0:
            p.set(f"key:{i}", os.urandom(50).hex())
        elif kind == 1:
            p.incr(f"counter:{i % 100}")
        elif kind == 2:
            p.lpush(f"list:{i % 100}", i)
        elif kind == 3:
            p.set(f"tmp:{i}", "x" * 20, px=random.randint(100, 5000))
        else:
            p.delete(f"key:{random.randrange(1_000_000)}")
        n += 1
    p.execute()
    delay = t0 + n / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
"""


def fill(port: int, keys: int) -> None:
    """N keys of 100 random bytes (hex of 50), through redis-cli --pipe."""
    proc = subprocess.Popen(["redis-cli", "-p", str(port), "--pipe"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)
    assert proc.stdin is not None
    chunk = []
    for i in range(keys):
        k = b"key:%d" % i
        v = os.urandom(50).hex().encode()
        chunk.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$100\r\n%s\r\n" % (len(k), k, v))
        if len(chunk) == 10_000:
            proc.stdin.write(b"".join(chunk))
            chunk = []
    proc.stdin.write(b"".join(chunk))
    proc.stdin.close()
    proc.wait()


def admin(zk: str, *args: str) -> list[str]:
    return [*ADMIN, "--zk", zk, "--cluster", "bench", "import", *args]


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Probe:
    """Writes a timestamp to the source every 100 ms and times how long its group's master takes to have it."""

    def __init__(self, source: redis.Redis, master: redis.Redis):
        self.source, self.master = source, master
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            value = f"{n}"
            t = time.monotonic()
            self.source.set("bench:probe", value)
            while self.master.get("bench:probe") != value.encode():
                if time.monotonic() - t > 30:
                    break
                time.sleep(0.001)
            self.samples.append(time.monotonic() - t)
            time.sleep(max(0.0, 0.1 - (time.monotonic() - t)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=5000.0, help="writes/s to the source during the import")
    ap.add_argument("--groups", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=0, help="replicas per group")
    ap.add_argument("--source-delay", type=int, default=5, help="the source's repl-diskless-sync-delay (Redis: 5)")
    ap.add_argument("--lag-seconds", type=float, default=20.0)
    ap.add_argument("--disk-snapshot", action="store_true", help="import --disk-snapshot")
    ap.add_argument("--pause", type=float, default=120.0, help="the cutover's pause (covers the verify)")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="kvstore-import-bench-"))
    procs: list[LocalProcess] = []
    writer: subprocess.Popen[bytes] | None = None
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    result: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
                   f"{platform.python_version()}, Redis {redis_version}",
        "keys": args.keys, "rate": args.rate, "groups": args.groups, "replicas": args.replicas,
        "source_diskless_sync_delay": args.source_delay, "disk_snapshot": args.disk_snapshot,
    }
    try:
        zk = start_zookeeper(base / "zk")
        procs.append(zk)
        masters = []
        groups = []
        for g in range(args.groups):
            m = start_redis(base / f"g{g}", extra={"repl-diskless-sync-delay": "0"})
            procs.append(m)
            reps = [start_redis(base / f"g{g}r{r}", replicaof=m.address, extra={"repl-diskless-sync-delay": "0"})
                    for r in range(args.replicas)]
            procs.extend(reps)
            masters.append(m)
            groups.append(Group(f"g{g + 1}", m.address, tuple(r.address for r in reps)))
        source = start_redis(base / "source", extra={"repl-diskless-sync-delay": str(args.source_delay),
                                                      "repl-backlog-size": "64mb"})
        procs.append(source)
        client = connect(zk.address)
        model = Groups(tuple(groups))
        table = SlotTable(tuple(even_split(model.ids())))
        ClusterStore(client, "bench").create(Meta("datastore", time.time()), model, table)
        client.stop()
        client.close()

        src = redis.Redis(port=source.port, socket_timeout=300)
        t = time.monotonic()
        fill(source.port, args.keys)
        print(f"source filled: {src.dbsize():,} keys in {time.monotonic() - t:.1f}s", flush=True)

        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(source.port), str(args.rate)])
        time.sleep(2)
        result["load_before"] = loadavg()
        keys_before = src.dbsize()
        t = time.monotonic()
        extra = ["--disk-snapshot"] if args.disk_snapshot else []
        run = subprocess.run(admin(zk.address, "--from", source.address, "--cutover", "--pause", str(args.pause),
                                   "--json", *extra), capture_output=True, text=True)
        wall = time.monotonic() - t
        result["load_after"] = loadavg()
        if run.returncode != 0:
            raise SystemExit(f"import failed ({run.returncode}): {run.stderr}")
        out = json.loads(run.stdout)
        result["cutover_run"] = {
            "wall_seconds": round(wall, 2), "keys_at_start": keys_before,
            "keys_per_second_wall": round(keys_before / wall),
            "snapshot": out["snapshot"], "stream_commands": out["stream"]["commands"],
            "in_sync_seconds_after_pause": out["cutover"]["in_sync_seconds"],
        }
        print(f"import --cutover: {wall:.1f}s start to exit, {keys_before / wall:,.0f} keys/s "
              f"(load {result['load_before']} -> {result['load_after']})", flush=True)
        t = time.monotonic()
        check = subprocess.run(admin(zk.address, "--from", source.address, "--verify", "--verify-keys", "all",
                                     "--json"), capture_output=True, text=True)
        verified = json.loads(check.stdout) if check.stdout.strip() else {"error": check.stderr}
        result["verify"] = {"exit_code": check.returncode, "seconds": round(time.monotonic() - t, 1),
                            "differences": verified.get("differences"), "keys_compared": verified.get("keys_compared"),
                            "expiring": verified.get("expiring"), "examples": verified.get("examples", [])[:5]}
        print(f"verify --verify-keys all: exit {check.returncode}, {verified.get('differences')} differences, "
              f"{verified.get('keys_compared')} keys compared", flush=True)

        # Lag: an emptied cluster, the import following (no cutover), a probe timed end to end.
        client = connect(zk.address)
        subprocess.run(admin(zk.address, "--forget"), capture_output=True, check=True)
        client.stop()
        client.close()
        for m in masters:
            redis.Redis(port=m.port).flushall()
        wait_until(lambda: src.ping(), 300, "the source's pause to end")
        follow = subprocess.Popen(admin(zk.address, "--from", source.address, "--json"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        ids = [g.id for g in groups]

        def master_of(key: bytes) -> redis.Redis:
            return redis.Redis(port=masters[ids.index(str(table.owner(key_slot(key))))].port)

        master = master_of(b"bench:probe")
        wait_until(lambda: master.dbsize() > args.keys // 2 // args.groups, 300, "the snapshot to be copied")
        src.set("bench:ready", 1)
        ready_master = master_of(b"bench:ready")
        wait_until(lambda: ready_master.get("bench:ready") == b"1", 300, "the import to follow the stream")
        time.sleep(3)  # past the catch-up of what the stream piled up during the copy
        probe = Probe(src, master)
        thread = threading.Thread(target=probe.run, daemon=True)
        result["lag_load_before"] = loadavg()
        thread.start()
        time.sleep(args.lag_seconds)
        probe.stop.set()
        thread.join(40)
        result["lag_load_after"] = loadavg()
        follow.send_signal(signal.SIGINT)
        follow.communicate(timeout=60)
        samples = sorted(probe.samples)
        result["lag"] = {
            "samples": len(samples), "p50_ms": round(1000 * samples[len(samples) // 2], 1),
            "p99_ms": round(1000 * samples[int(len(samples) * 0.99)], 1), "max_ms": round(1000 * samples[-1], 1),
        }
        print(f"lag at {args.rate:,.0f} writes/s: p50 {result['lag']['p50_ms']} ms, p99 {result['lag']['p99_ms']} "
              f"ms, max {result['lag']['max_ms']} ms over {len(samples)} probes", flush=True)
    finally:
        if writer is not None:
            writer.kill()
            writer.wait()
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
