"""Datastore mode: a failed master is replaced by its most up-to-date replica; old masters come back as replicas."""

from __future__ import annotations

import signal

import redis
from sentinel_helpers import FAST, restart_redis, wait_for


def _master(store, gid):  # type: ignore[no-untyped-def]
    return store.read_groups().value.get(gid)


def test_killed_master_is_replaced_by_a_replica_and_acknowledged_writes_survive(
        make_cluster, sentinels, store, redis_factory):
    cluster = make_cluster(groups=2, replicas=2, mode="datastore")
    master, *replicas = cluster.nodes["g1"]
    sentinel = sentinels.start(cluster.zk_hosts, cluster.name, *FAST)
    client = redis.Redis(port=master.port)
    for i in range(200):
        client.set(f"k{i}", f"v{i}")
    assert client.wait(2, 5000) == 2  # every write above reached both replicas
    client.close()

    master.signal(signal.SIGKILL)
    wait_for(lambda: _master(store, "g1").master != master.address, 15, "g1's master to change")
    group = _master(store, "g1")
    assert group.master in {r.address for r in replicas}
    assert group.state == "ok"
    assert group.replicas[-1] == master.address  # old master kept, to be re-attached
    assert store.client.exists(f"{store.root}/failover/g1") is None
    event = sentinel.wait_event("failover_done", group="g1")
    assert event["master"] == group.master

    new_master = redis.Redis.from_url(f"redis://{group.master}")
    assert new_master.info("replication")["role"] == "master"
    assert [new_master.get(f"k{i}") for i in range(200)] == [f"v{i}".encode() for i in range(200)]
    other = next(r for r in replicas if r.address != group.master)
    wait_for(lambda: redis.Redis(port=other.port).info("replication").get("master_port") ==
             int(group.master.rsplit(":", 1)[1]), 10, "the other replica to follow the new master")
    # g2 untouched
    assert _master(store, "g2").master == cluster.nodes["g2"][0].address

    # The old master returns (same port, same dir) with a stale dataset of its own: it must become
    # a replica of the new master and end up with the new master's data only.
    new_master.set("k0", "after-failover")
    new_master.delete("k1")
    old = restart_redis(redis_factory, master)
    stale = redis.Redis(port=old.port)
    stale.set("only-on-old", "stale")
    sentinel.wait_event("replica_repointed", node=master.address)
    wait_for(lambda: stale.info("replication")["role"] == "slave"
             and stale.info("replication")["master_link_status"] == "up", 15, "old master to sync as a replica")
    assert stale.get("k0") == b"after-failover"
    assert stale.get("k1") is None
    assert stale.get("only-on-old") is None
    assert stale.get("k2") == b"v2"
    assert sentinel.alive()


def test_group_without_healthy_replica_is_marked_down_not_promoted_until_its_master_returns(
        make_cluster, sentinels, store, redis_factory):
    cluster = make_cluster(groups=2, replicas=0, mode="datastore")
    master = cluster.nodes["g1"][0]
    sentinel = sentinels.start(cluster.zk_hosts, cluster.name, *FAST)
    master.signal(signal.SIGKILL)
    event = sentinel.wait_event("group_down_no_replica", group="g1")
    assert event["level"] == "error"
    group = _master(store, "g1")
    assert (group.master, group.state) == (master.address, "down")
    assert store.client.exists(f"{store.root}/failover/g1") is None
    restart_redis(redis_factory, master)
    sentinel.wait_event("group_recovered", group="g1")
    assert _master(store, "g1").state == "ok"
    assert sentinel.alive()
