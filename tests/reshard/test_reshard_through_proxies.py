"""Online resharding under client load through two kvstore-proxies: no acknowledged write lost or repeated."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from reshard_helpers import admin_process

from kvstore_admin.processes import start_proxy

COUNTERS = 64


class Proxy:
    """A kvstore-proxy (one worker) from ``start_proxy``, which waits until it answers PING."""

    def __init__(self, zk_hosts: str, cluster: str, log: Path):
        self.proc = start_proxy(zk_hosts, cluster, log, timeout=20.0)
        self.port = self.proc.port

    def client(self, protocol: int = 2) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=20, protocol=protocol)

    def stop(self) -> None:
        self.proc.stop(timeout=15)


class Workload(threading.Thread):
    """INCR on shared counters and SET of unique keys through one proxy, every reply checked."""

    def __init__(self, name: str, client: redis.Redis, stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.client = client
        self.stop_event = stop
        self.incr_replies: dict[int, list[int]] = {i: [] for i in range(COUNTERS)}
        self.written: dict[bytes, bytes] = {}
        self.retries = 0
        self.problems: list[str] = []
        self.ops = 0

    def call(self, *args: object) -> object:
        while True:
            try:
                return self.client.execute_command(*args)
            except redis.exceptions.TryAgainError:  # not executed: safe to retry
                self.retries += 1
                time.sleep(0.002)

    def run(self) -> None:
        n = 0
        try:
            while not self.stop_event.is_set():
                n += 1
                counter = n % COUNTERS
                value = self.call("INCR", f"counter:{{c{counter}}}")
                self.incr_replies[counter].append(int(value))  # type: ignore[arg-type]
                key = f"unique:{self.name}:{n}".encode()
                reply = self.call("SET", key, key[::-1])
                if reply not in (b"OK", True):
                    self.problems.append(f"SET {key!r} -> {reply!r}")
                self.written[key] = key[::-1]
                if n % 7 == 0:
                    got = self.call("GET", key)
                    if got != key[::-1]:
                        self.problems.append(f"GET {key!r} right after SET -> {got!r}")
                self.ops += 3
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.problems.append(f"{type(exc).__name__}: {exc}")


def check_workloads(workers: list[Workload], read: Callable[[bytes], bytes | None]) -> None:
    """Every acknowledged INCR got a distinct value, the final value counts them all, every SET is there."""
    for i in range(COUNTERS):
        replies = sorted(r for w in workers for r in w.incr_replies[i])
        assert replies == list(range(1, len(replies) + 1)), f"counter {i}: missed or repeated increments"
        assert int(read(f"counter:{{c{i}}}".encode()) or 0) == len(replies)
    for w in workers:
        for key, value in w.written.items():
            assert read(key) == value, f"acknowledged SET of {key!r} lost"


@pytest.mark.timeout(300)
def test_8000_slots_move_back_and_forth_twice_under_load_through_two_proxies(cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    proxies = [Proxy(c.zk_hosts, c.tc.name, tmp_path / f"proxy{i}.log") for i in range(2)]
    stop = threading.Event()
    # One client speaks RESP2, the other RESP3 (redis-py 8's default).
    workers = [Workload(f"w{i}", p.client(protocol=2 + i), stop) for i, p in enumerate(proxies)]
    try:
        for w in workers:
            w.start()
        time.sleep(0.3)
        # Baseline throughput without a reshard, then the same workload during the reshards.
        ops0, t0 = sum(w.ops for w in workers), time.monotonic()
        time.sleep(1.5)
        baseline = (sum(w.ops for w in workers) - ops0) / (time.monotonic() - t0)
        ops1 = sum(w.ops for w in workers)
        began = time.monotonic()
        for _ in range(2):
            for target in ("g2", "g1"):
                # A process of its own, as in production (in-process it would share the GIL with the load).
                # The workload creates keys in every slot; on a quiet machine faster than the default
                # busy rate moves them, so that rate would make each reshard chase them for minutes.
                result = admin_process(c.zk_hosts, "reshard", "--slots", "0-7999", "--to", target, "--json",
                                       "--slots-per-step", "2000", "--busy-slots-per-step", "2000",
                                       "--busy-rate", "10000", "--timeout", "20", cluster=c.tc.name)
                assert result.returncode == 0, result.stderr
                assert not any(w.problems for w in workers), [w.problems[:3] for w in workers]
        elapsed = time.monotonic() - began
        during = (sum(w.ops for w in workers) - ops1) / elapsed
        time.sleep(0.3)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
        for p in proxies:
            p.stop()
    problems = [p for w in workers for p in w.problems]
    assert not problems, problems[:10]
    # Every acknowledged INCR got a distinct value, and the final value counts them all.
    direct = {gid: c.master(gid) for gid in ("g1", "g2")}
    owners = c.owners()
    from kvstore_cluster.slots import key_slot

    def read(key: bytes) -> bytes | None:
        return direct[owners[key_slot(key)]].get(key)  # type: ignore[return-value]

    check_workloads(workers, read)
    c.check_ok()
    total_ops = sum(w.ops for w in workers)
    print(f"\n4 reshards of 8000 slots in {elapsed:.1f}s under load: {total_ops} ops, "
          f"{sum(w.retries for w in workers)} TRYAGAIN retries; client ops/s {baseline:.0f} without a reshard, "
          f"{during:.0f} during ({100 * during / baseline:.0f}%)")


@pytest.mark.timeout(300)
def test_rebalance_onto_a_new_group_under_an_incr_load_reads_each_source_once(cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The operator's case: keys on two groups, a third added, `rebalance` in several steps under load."""
    from reshard_helpers import g3_just_added

    from kvstore_cluster.slots import key_slot

    c = cluster(groups=3)
    keys = g3_just_added(c, 30_000)
    proxy = Proxy(c.zk_hosts, c.tc.name, tmp_path / "proxy.log")
    stop = threading.Event()
    workers = [Workload(f"w{i}", proxy.client(protocol=2 + i % 2), stop) for i in range(3)]
    try:
        for w in workers:
            w.start()
        time.sleep(0.5)
        # Full speed (--busy-rate 0): while paced, the mover reads each step's keys afresh instead
        # of tracking the clients' writes (test_reshard_paced.py).
        result = admin_process(c.zk_hosts, "rebalance", "--json", "--slots-per-step", "1000", "--busy-rate", "0",
                               cluster=c.tc.name)
        assert result.returncode == 0, result.stderr
        time.sleep(0.3)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
        proxy.stop()
    out = json.loads(result.stdout)
    problems = [p for w in workers for p in w.problems]
    assert not problems, problems[:10]
    # Held, never refused: no client saw -TRYAGAIN.
    assert sum(w.retries for w in workers) == 0
    assert out["steps"] == 6 and out["scan_passes"] == 2  # one pass over each source, not one per step
    assert out["keys_moved"] >= 10_000
    owners_after = c.owners()
    direct = {gid: c.master(gid) for gid in ("g1", "g2", "g3")}

    def read(key: bytes) -> bytes | None:
        return direct[owners_after[key_slot(key)]].get(key)  # type: ignore[return-value,index]

    check_workloads(workers, read)
    assert all(read(k) == b"v" * 100 for k in keys[::97])
    c.check_ok()
