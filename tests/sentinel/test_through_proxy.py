"""End to end through kvstore-proxy: failover under write load, measured from SIGKILL to the first good write."""

from __future__ import annotations

import signal
import statistics
import threading
import time

import pytest
import redis
from sentinel_helpers import keys_of_group, wait_for

from kvstore_cluster.store import ClusterStore, connect

RUNS = 3


class Writer(threading.Thread):
    """SETs ``prefix:<n>`` through the proxy as fast as it can; remembers every acknowledged key in order."""

    def __init__(self, port: int, prefix: str):
        super().__init__(daemon=True)
        self.client = redis.Redis(port=port, protocol=2, socket_timeout=2, socket_connect_timeout=2)
        self.prefix = prefix
        self.acked: list[str] = []
        self.errors = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            key = f"{self.prefix}:{n}"
            n += 1
            try:
                self.client.set(key, key)
                self.acked.append(key)
            except redis.RedisError:
                self.errors += 1
                time.sleep(0.01)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        self.client.close()


def _first_good_write(port: int, key: str, timeout: float) -> float:
    client = redis.Redis(port=port, protocol=2, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                client.set(key, "probe")
                return time.monotonic()
            except redis.RedisError:
                time.sleep(0.02)
    finally:
        client.close()
    raise TimeoutError(f"no successful write of {key} within {timeout}s")


def _kill_master_under_load(make_cluster, sentinels, zk_hosts: str, proxy_factory, client,  # type: ignore[no-untyped-def]
                            name: str) -> tuple[float, float]:
    """One run: returns (seconds to the first good write through the proxy, seconds to the ZK change)."""
    cluster = make_cluster(groups=2, replicas=1, mode="datastore", name=name)
    store = ClusterStore(client, name)
    master, replica = cluster.nodes["g1"]
    proxy = proxy_factory.start(zk_hosts, name)
    sentinel = sentinels.start(zk_hosts, name)  # default interval / down-after
    writer = Writer(proxy.port, f"w-{name}")
    writer.start()
    try:
        wait_for(lambda: len(writer.acked) > 500, 20, "the write load to get going")
        # Sync point: everything acknowledged so far has reached g1's replica.
        synced = list(writer.acked)
        target = redis.Redis(port=master.port).info("replication")["master_repl_offset"]
        wait_for(lambda: redis.Redis(port=replica.port).info("replication")["slave_repl_offset"] >= target,
                 10, "the replica to catch up")
        g1_key = keys_of_group(cluster.slots, "g1", 1, prefix=f"probe-{name}")[0]
        killed = time.monotonic()
        master.signal(signal.SIGKILL)
        good = _first_good_write(proxy.port, g1_key, 20)
        zk_changed = wait_for(lambda: store.read_groups().value.get("g1").master != master.address,
                              5, "ZooKeeper to show the new master")
        after = len(writer.acked)
        wait_for(lambda: len(writer.acked) > after + 200, 20, "writes to flow again")
    finally:
        writer.stop()
    reader = redis.Redis(port=proxy.port, protocol=2)
    values = []
    for i in range(0, len(synced), 500):
        values += reader.mget(synced[i:i + 500])
    reader.close()
    missing = [k for k, v in zip(synced, values, strict=True) if v != k.encode()]
    assert not missing, f"{name}: {len(missing)} acknowledged, replicated writes lost, e.g. {missing[:5]}"
    sentinel.stop()
    proxy.stop()
    return good - killed, zk_changed - killed


@pytest.mark.slow
def test_datastore_failover_under_write_load_keeps_replicated_writes(
        make_cluster, sentinels, zk_hosts, proxy_factory):
    """Kill a master under load: writes that reached the replica survive; report time to first good write."""
    client = connect(zk_hosts)
    try:
        runs = [_kill_master_under_load(make_cluster, sentinels, zk_hosts, proxy_factory, client, f"load{i}")
                for i in range(RUNS)]
    finally:
        client.stop()
        client.close()
    times, zk_times = [r[0] for r in runs], [r[1] for r in runs]
    print(f"\ndatastore, defaults: SIGKILL -> first good write through the proxy: median "
          f"{statistics.median(times):.2f} s {[round(t, 2) for t in times]}; -> new master in ZooKeeper: "
          f"median {statistics.median(zk_times):.2f} s {[round(t, 2) for t in zk_times]}")


@pytest.mark.slow
def test_cache_node_killed_under_load_other_groups_answer_throughout(
        make_cluster, sentinels, zk_hosts, proxy_factory):
    cluster = make_cluster(groups=3, mode="cache")
    proxy = proxy_factory.start(zk_hosts, cluster.name)
    sentinel = sentinels.start(zk_hosts, cluster.name)  # defaults
    others = keys_of_group(cluster.slots, "g2", 50) + keys_of_group(cluster.slots, "g3", 50)
    victim_key = keys_of_group(cluster.slots, "g1", 1)[0]
    client = redis.Redis(port=proxy.port, protocol=2, socket_timeout=2)
    client.mset({k: k for k in others})
    failures: list[str] = []
    stop = threading.Event()

    def read_others() -> None:
        c = redis.Redis(port=proxy.port, protocol=2, socket_timeout=2)
        while not stop.is_set():
            try:
                for k in others:
                    if c.get(k) != k.encode():
                        failures.append(f"{k}: wrong value")
            except redis.RedisError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
        c.close()

    thread = threading.Thread(target=read_others, daemon=True)
    thread.start()
    try:
        killed = time.monotonic()
        cluster.nodes["g1"][0].signal(signal.SIGKILL)
        good = _first_good_write(proxy.port, victim_key, 20)
        sentinel.wait_event("group_removed", group="g1")
        time.sleep(0.5)  # keep reading the other groups a little after the switch
    finally:
        stop.set()
        thread.join(10)
    assert not failures, failures[:5]
    print(f"\ncache, defaults: SIGKILL -> killed group's slots served by others: {good - killed:.2f} s")
