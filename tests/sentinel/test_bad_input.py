"""Bad input is logged as a clear event and the sentinel keeps running: garbage znodes, garbage nodes, refusals."""

from __future__ import annotations

import json
import signal
import time

import redis
from sentinel_helpers import FAST, GarbageServer, wait_for

from kvstore_cluster import paths
from kvstore_cluster.model import Group, Groups, Meta, SlotTable, even_split
from kvstore_cluster.store import ClusterStore


def _create(store: ClusterStore, mode: str, groups: list[Group]) -> None:
    model = Groups(tuple(groups))
    store.create(Meta(mode=mode, created_at=time.time()), model, SlotTable(tuple(even_split(model.ids()))))


def test_garbage_in_the_groups_znode_is_logged_and_the_sentinel_carries_on(make_cluster, sentinels, store):
    cluster = make_cluster(groups=2, mode="cache")
    sentinel = sentinels.start(cluster.zk_hosts, cluster.name, *FAST)
    good, _ = store.client.get(paths.groups("test"))
    store.client.set(paths.groups("test"), b"\x00{not json at all")
    event = sentinel.wait_event("groups_unreadable")
    assert "not valid JSON" in event["error"]
    sentinel.wait_event("leader_round_failed")
    # It still probes the last good groups: a node failure is still seen.
    cluster.nodes["g1"][0].signal(signal.SIGKILL)
    sentinel.wait_event("node_down", node=cluster.nodes["g1"][0].address)
    store.client.set(paths.groups("test"), good)
    sentinel.wait_event("groups_unreadable_cleared")
    wait_for(lambda: store.read_groups().value.get("g1").state == "down", 15, "g1 removed once groups is readable")
    assert sentinel.alive()


def test_node_answering_non_redis_bytes_is_a_failed_probe_and_never_a_candidate(
        zk_hosts, redis_factory, sentinels, store):
    garbage = GarbageServer()
    try:
        master = redis_factory.start()
        replica = redis_factory.start(replicaof=master.address)
        wait_for(lambda: redis.Redis(port=master.port).info("replication")["connected_slaves"] == 1, 15,
                 "replica to connect")
        # The garbage node is listed first, so it would win any tie if it were believed.
        _create(store, "datastore", [Group("g1", master.address, (garbage.address, replica.address))])
        sentinel = sentinels.start(zk_hosts, "test", *FAST)
        failed = sentinel.wait_event("node_probe_failed", node=garbage.address)
        assert "not a Redis reply" in failed["error"]
        sentinel.wait_event("node_down", node=garbage.address)
        master.signal(signal.SIGKILL)
        done = sentinel.wait_event("failover_done", group="g1")
        assert done["master"] == replica.address
        assert sentinel.alive()
    finally:
        garbage.close()


def test_replica_refusing_replicaof_is_logged_and_the_failover_completes(zk_hosts, redis_factory, sentinels, store):
    master = redis_factory.start()
    good = redis_factory.start(replicaof=master.address)
    stubborn = redis_factory.start(replicaof=master.address, extra={"rename-command": 'REPLICAOF ""'})
    wait_for(lambda: redis.Redis(port=master.port).info("replication")["connected_slaves"] == 2, 15,
             "replicas to connect")
    client = redis.Redis(port=master.port)
    client.set("k", "v")
    assert client.wait(2, 5000) == 2
    _create(store, "datastore", [Group("g1", master.address, (good.address, stubborn.address))])
    sentinel = sentinels.start(zk_hosts, "test", *FAST)
    master.signal(signal.SIGKILL)
    refused = sentinel.wait_event("replica_repoint_failed", node=stubborn.address)
    assert "REPLICAOF" in refused["error"] or "unknown command" in refused["error"]
    done = sentinel.wait_event("failover_done", group="g1")
    assert done["master"] == good.address
    # The reconciler keeps trying (and logging) without crashing.
    wait_for(lambda: len(sentinel.events("replica_repoint_failed")) >= 2, 20, "a second, backed-off attempt")
    assert sentinel.alive()


def test_an_unreadable_view_is_logged_and_not_counted_and_the_leader_acts_on_the_others(
        make_cluster, sentinels, store):
    cluster = make_cluster(groups=2, mode="cache")
    # A fresh view that says g1's master is down, but is not a well-formed view: it must not vote.
    victim = cluster.nodes["g1"][0]
    now = time.time()
    liar = {"id": "liar", "time": now, "leader": "yes", "down": {victim.address: now}, "nodes": {}}
    store.client.create(paths.sentinel("test", "liar"), json.dumps(liar).encode(), ephemeral=True)
    sentinel = sentinels.start(cluster.zk_hosts, cluster.name, *FAST)
    event = sentinel.wait_event("view_unreadable", sentinel="liar")
    assert "field 'leader' has the wrong type" in event["error"]
    time.sleep(2.0)  # longer than down-after: a counted vote would have removed g1 by now; not synchronisation
    assert store.read_groups().value.get("g1").state == "ok"
    assert len(sentinel.events("view_unreadable")) == 1  # logged once, not every round
    victim.signal(signal.SIGKILL)  # its own view still counts
    sentinel.wait_event("group_removed", group="g1")
    store.client.delete(paths.sentinel("test", "liar"))
    sentinel.wait_event("view_unreadable_cleared", sentinel="liar")
    assert sentinel.alive()


def test_an_unreadable_failover_record_leaves_its_group_alone_until_it_is_gone(make_cluster, sentinels, store):
    cluster = make_cluster(groups=2, mode="cache")
    store.client.create(paths.failover("test", "g1"), b'{"kind": "failover", "group": "g1"}')
    sentinel = sentinels.start(cluster.zk_hosts, cluster.name, *FAST)
    event = sentinel.wait_event("failover_record_unreadable", group="g1")
    assert "failover/g1 holds malformed data" in event["error"]
    cluster.nodes["g1"][0].signal(signal.SIGKILL)
    sentinel.wait_event("node_down", node=cluster.nodes["g1"][0].address)
    time.sleep(1.0)  # a few leader rounds with g1 down: it must be left alone; not synchronisation
    assert store.read_groups().value.get("g1").state == "ok"
    assert len(sentinel.events("failover_record_unreadable")) == 1
    store.client.delete(paths.failover("test", "g1"))  # the admin cleared it
    sentinel.wait_event("group_removed", group="g1")
    assert sentinel.alive()
