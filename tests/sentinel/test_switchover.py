"""Manual switchover: no acknowledged write lost, old master re-attached; abandoned switchovers are cleaned up."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import redis
from sentinel_helpers import FAST, wait_for

from kvstore_cluster import paths
from kvstore_cluster.ops import switchover as ops_switchover
from kvstore_cluster.ops.context import Context
from kvstore_cluster.ops.errors import SwitchoverError
from kvstore_cluster.ops.fence import NO_FENCE
from kvstore_cluster.ops.switchover import STALE_AFTER


def switchover(store, group_id, to=None):  # type: ignore[no-untyped-def]
    """What 'kvstore-admin failover' runs."""
    return asyncio.run(ops_switchover.switchover(Context(store, node_timeout=5.0), NO_FENCE, group_id, to=to))


def test_switchover_under_write_load_loses_no_acknowledged_write(make_cluster, store, proxy_factory):
    cluster = make_cluster(groups=2, replicas=2, mode="datastore")
    old, first, second = cluster.nodes["g1"]
    for node in (first, second):  # make_cluster returns before the (diskless, delayed) initial sync
        wait_for(lambda n=node: redis.Redis(port=n.port).info("replication")["master_link_status"] == "up",
                 20, f"{node.address} to finish its initial sync")
    proxy = proxy_factory.start(cluster.zk_hosts, cluster.name)
    acked: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def write() -> None:
        c = redis.Redis(port=proxy.port, protocol=2, socket_timeout=10)
        n = 0
        while not stop.is_set():
            key = f"sw:{n}"
            n += 1
            try:
                c.set(key, key)
                acked.append(key)
            except redis.RedisError as exc:
                errors.append(str(exc))
        c.close()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(acked) > 300, 20, "writes to flow")
        started = time.monotonic()
        new = switchover(store, "g1", to=second.address)
        took = time.monotonic() - started
        count = len(acked)
        wait_for(lambda: len(acked) > count + 300, 20, "writes to flow after the switchover")
    finally:
        stop.set()
        thread.join(15)
    assert new == second.address
    group = store.read_groups().value.get("g1")
    assert (group.master, group.state) == (second.address, "ok")
    assert group.replicas == (first.address, old.address)
    assert store.client.exists(paths.failover("test", "g1")) is None
    reader = redis.Redis(port=proxy.port, protocol=2)
    values = reader.mget(acked)
    lost = [k for k, v in zip(acked, values, strict=True) if v != k.encode()]
    assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:5]}"
    for node in (old, first):
        wait_for(lambda n=node: redis.Redis(port=n.port).info("replication").get("master_port") == second.port,
                 10, f"{node.address} to follow the new master")
    print(f"\nswitchover took {took:.3f} s; write errors during it: {len(errors)} {errors[:3]}")


def test_switchover_refuses_a_target_that_is_not_a_replica(make_cluster, store):
    cluster = make_cluster(groups=2, replicas=1, mode="datastore")
    with pytest.raises(SwitchoverError, match="not a replica"):
        switchover(store, "g1", to=cluster.nodes["g2"][0].address)
    assert store.read_groups().value.get("g1").master == cluster.nodes["g1"][0].address


@pytest.mark.parametrize(("step", "finished"), [("pause", False), ("promote", True)])
def test_sentinel_finishes_or_undoes_an_abandoned_switchover(make_cluster, sentinels, store, step, finished):
    cluster = make_cluster(groups=2, replicas=1, mode="datastore")
    master, replica = cluster.nodes["g1"]
    groups_v = store.read_groups()
    from dataclasses import replace

    from kvstore_cluster.store import Create, Set
    group = groups_v.value.get("g1")
    record = {"kind": "switchover", "group": "g1", "old_master": master.address, "candidate": replica.address,
              "step": step, "started_at": time.time() - STALE_AFTER - 1, "by": "admin"}
    store.commit([
        Create(paths.failover("test", "g1"), json.dumps(record).encode()),
        Set(paths.groups("test"), groups_v.value.put(replace(group, state="failing_over")).encode(),
            groups_v.version),
    ])
    sentinel = sentinels.start(cluster.zk_hosts, cluster.name, *FAST)
    sentinel.wait_event("switchover_finished_by_sentinel" if finished else "switchover_undone_by_sentinel")
    group = store.read_groups().value.get("g1")
    assert group.state == "ok"
    assert group.master == (replica.address if finished else master.address)
    assert store.client.exists(paths.failover("test", "g1")) is None
