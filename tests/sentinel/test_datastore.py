"""Datastore mode: a failed master is replaced by its most up-to-date replica; old masters come back as replicas."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import redis
from sentinel_helpers import FAST, restart_redis, wait_for
from structlog.testing import capture_logs

from kvstore_admin.processes import free_port, redis_ping, spawn, wait_until
from kvstore_cluster.node import Node


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


def _replicaof_lines(node) -> list[str]:  # type: ignore[no-untyped-def]
    """The ``replicaof`` lines of the node's config file (make_cluster's nodes run from <dir>/redis.conf)."""
    conf = Path(node.log).parent / "redis.conf"
    return [line for line in conf.read_text().splitlines() if line.startswith("replicaof")]


def test_failover_rewrites_the_config_files_so_restarted_nodes_keep_their_roles(
        make_cluster, sentinels, store, redis_factory):
    cluster = make_cluster(groups=1, replicas=2, mode="datastore")
    master, *replicas = cluster.nodes["g1"]
    assert all(_replicaof_lines(r) == [f"replicaof 127.0.0.1 {master.port}"] for r in replicas)
    sentinel = sentinels.start(cluster.zk_hosts, cluster.name, *FAST)

    master.signal(signal.SIGKILL)
    done = sentinel.wait_event("failover_done", group="g1")
    promoted = next(r for r in replicas if r.address == done["master"])
    other = next(r for r in replicas if r is not promoted)
    # REPLICAOF NO ONE then CONFIG REWRITE: restarted, the promoted node would still be a master.
    assert _replicaof_lines(promoted) == []
    # The repointed replica's file names the new master, not the dead one.
    assert _replicaof_lines(other) == [f"replicaof 127.0.0.1 {promoted.port}"]

    # The old master comes back (with a file of its own saying nothing about replication): the
    # reconciler repoints it, and its file says so too.
    old = restart_redis(redis_factory, master)
    sentinel.wait_event("replica_repointed", node=master.address)
    assert _replicaof_lines(old) == [f"replicaof 127.0.0.1 {promoted.port}"]

    # Restarted from their own files (not rewritten by the test), both keep their roles.
    sentinel.stop()
    for node in (promoted, other):
        node.stop()
        again = spawn(node.name, node.argv, node.port, Path(node.log))
        redis_factory.procs.append(again)
        wait_until(lambda n=node: redis_ping(n.port), 10, f"{node.address} to restart")
    assert redis.Redis(port=promoted.port).info("replication")["role"] == "master"
    follows = redis.Redis(port=other.port).info("replication")
    assert (follows["role"], follows["master_port"]) == ("slave", promoted.port)
    assert not sentinel.events("config_rewrite_failed")


def test_replicaof_on_a_node_without_a_config_file_is_not_a_rewrite_failure(tmp_path):
    binary = shutil.which("redis-server")
    assert binary
    port = free_port()
    proc = spawn("redis-noconf", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""], port,
                 tmp_path / "redis.log")
    try:
        wait_until(lambda: redis_ping(port), 10, "redis without a config file")

        async def run() -> None:
            async with Node(f"127.0.0.1:{port}") as node:
                await node.follow("127.0.0.1:1")
                await node.promote()

        with capture_logs() as logs:
            asyncio.run(run())  # the one REPLICAOF of the admin and the sentinel
        assert redis.Redis(port=port).info("replication")["role"] == "master"
        assert [e for e in logs if e["event"] == "config_rewrite_failed"] == []
    finally:
        proc.stop()
