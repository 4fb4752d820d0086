"""kvstore-admin failover (manual switchover) and group rejoin against real ZooKeeper and redis-servers."""

from __future__ import annotations

from pathlib import Path

import redis
from click.testing import CliRunner, Result

from kvstore_admin.cli import cli
from kvstore_admin.processes import wait_until
from kvstore_cluster.model import Group
from kvstore_cluster.store import ClusterStore, connect


def admin(cluster, *args: str) -> Result:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(cli, ["--zk", cluster.zk_hosts, "--cluster", cluster.name, *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def read_group(cluster, group_id: str) -> Group:  # type: ignore[no-untyped-def]
    client = connect(cluster.zk_hosts)
    try:
        group = ClusterStore(client, cluster.name).read_groups().value.get(group_id)
    finally:
        client.stop()
        client.close()
    assert group is not None
    return group


def test_failover_promotes_the_replica_and_keeps_every_acknowledged_write(make_cluster) -> None:
    cluster = make_cluster(groups=2, replicas=1, mode="datastore")
    old, replica = cluster.nodes["g1"]
    master = redis.Redis(port=old.port)
    for i in range(500):
        master.set(f"k{i}", i)

    result = admin(cluster, "failover", "g1")

    assert result.exit_code == 0, result.output
    assert f"master is now {replica.address}" in result.output
    group = read_group(cluster, "g1")
    assert (group.master, group.replicas, group.state) == (replica.address, (old.address,), "ok")
    promoted = redis.Redis(port=replica.port)
    assert promoted.info("replication")["role"] == "master"
    assert promoted.mget([f"k{i}" for i in range(500)]) == [str(i).encode() for i in range(500)]
    wait_until(lambda: master.info("replication").get("master_port") == replica.port, 10,
               "the old master to follow the new one")
    # Both config files were rewritten: restarted, each node keeps its new role.
    assert "replicaof" not in (Path(replica.log).parent / "redis.conf").read_text()
    assert f"replicaof 127.0.0.1 {replica.port}" in (Path(old.log).parent / "redis.conf").read_text()


def test_failover_to_a_node_outside_the_group_is_refused_and_changes_nothing(make_cluster) -> None:
    cluster = make_cluster(groups=2, replicas=1, mode="datastore")
    other = cluster.nodes["g2"][0]

    result = admin(cluster, "failover", "g1", "--to", other.address)

    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "not a replica" in result.stderr
    assert read_group(cluster, "g1").master == cluster.nodes["g1"][0].address


def test_failover_of_an_unknown_group_is_one_clear_error(make_cluster) -> None:
    cluster = make_cluster(groups=1, replicas=1, mode="datastore")
    result = admin(cluster, "failover", "g9")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "g9" in result.stderr


def test_group_rejoin_flushes_a_down_cache_group_and_gives_it_slots(make_cluster) -> None:
    cluster = make_cluster(groups=2, replicas=0, mode="cache")
    client = connect(cluster.zk_hosts)
    try:
        store = ClusterStore(client, cluster.name)
        groups_v, slots_v = store.read_groups(), store.read_slots()
        # What the sentinel does when g2 fails: g2 down, its slots handed to g1, in one transaction.
        down = groups_v.value.put(Group("g2", groups_v.value.get("g2").master, (), "down"))
        moved = slots_v.value.assign([(0, 16383)], "g1")
        store.set_groups_and_slots(type(groups_v)(down, groups_v.version), type(slots_v)(moved, slots_v.version))
        stale = redis.Redis(port=cluster.nodes["g2"][0].port)
        stale.set("stale", "old value")

        g1 = redis.Redis(port=cluster.nodes["g1"][0].port)
        g1.mset({f"k{i}": i for i in range(2000)})  # written while g1 served every slot

        result = admin(cluster, "group", "rejoin", "g2")

        assert result.exit_code == 0, result.output
        assert "flushed and back in state ok" in result.output
        assert store.read_groups().value.get("g2").state == "ok"
        assert store.read_slots().value.counts() == {"g1": 8192, "g2": 8192}
        # The rebalance moved g2's share with its keys: none of g1's keys was lost.
        g2 = redis.Redis(port=cluster.nodes["g2"][0].port)
        assert stale.get("stale") is None
        assert g1.dbsize() + g2.dbsize() == 2000 and g2.dbsize() > 0
    finally:
        client.stop()
        client.close()


def test_group_rejoin_of_a_healthy_group_is_refused(make_cluster) -> None:
    cluster = make_cluster(groups=2, replicas=0, mode="cache")
    result = admin(cluster, "group", "rejoin", "g1")
    assert result.exit_code == 1 and "not down" in result.stderr
