"""What is set cluster-wide reaches groups added later and new masters: scripts, functions, CONFIG SET."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kvstore_admin.processes import LocalProcess, start_redis, wait_until
from kvstore_cluster.slots import key_slot
from kvstore_cluster.store import ClusterStore

from .admin_helpers import admin
from .conftest import ProxyCluster, ProxyProcess, _make_cluster

GET_KEY = "return redis.call('GET', KEYS[1])"
LIB = "#!lua name=replay\nredis.register_function('rp_get', function(keys, args) return redis.call('GET', keys[1]) end)"



@pytest.fixture(scope="module")
def rc(zookeeper: LocalProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyCluster]:
    """Two groups of a master and a replica, datastore mode, a proxy."""
    base = tmp_path_factory.mktemp("replay")
    cluster, cleanup = _make_cluster(zookeeper, base, 2, replicas=1, mode="datastore")
    try:
        cluster.proxy = ProxyProcess(cluster.zk_hosts, cluster.name, base / "proxy.log")
        yield cluster
    finally:
        cleanup()


def _groups(c: ProxyCluster):  # type: ignore[no-untyped-def]
    client = c.zk()
    try:
        store = ClusterStore(client, c.name)
        return store.read_groups().value, store.read_slots().value
    finally:
        client.stop()
        client.close()


def _node(address: str) -> redis.Redis:
    host, _, port = address.rpartition(":")
    return redis.Redis(host=host, port=int(port), socket_timeout=10)


def _events(address: str) -> str:
    return str(_node(address).config_get("notify-keyspace-events")["notify-keyspace-events"])


def _key_of(c: ProxyCluster, gid: str, prefix: str) -> bytes:
    slots = _groups(c)[1]
    return next(k for k in (f"{prefix}:{i}".encode() for i in range(100000)) if slots.owner(key_slot(k)) == gid)


def test_everything_set_cluster_wide_reaches_new_groups_and_new_masters(rc: ProxyCluster, tmp_path: Path,
                                                                        sentinels) -> None:  # type: ignore[no-untyped-def]
    c = rc
    assert c.proxy is not None
    pc = c.proxy.client()
    sha = pc.script_load(GET_KEY)
    assert pc.function_load(LIB) == b"replay"
    assert pc.config_set("notify-keyspace-events", "KEA") is True
    groups, _ = _groups(c)
    for g in groups:  # every node of every group, replicas too
        for address in (g.master, *g.replicas):
            wait_until(lambda a=address: _events(a) == "AKE", 10, f"{address} to get the parameter")

    # a group added afterwards: its nodes get the parameters when added, the scripts and
    # libraries when the proxy first connects
    master = start_redis(tmp_path / "g3")
    replica = start_redis(tmp_path / "g3r", replicaof=master.address, extra={"repl-diskless-sync-delay": "0"})
    c.extra_procs.extend([master, replica])
    added = admin(c.zk_hosts, "group", "add", "--id", "g3", "--master", master.address, "--replica", replica.address,
                  cluster=c.name)
    assert added.exit_code == 0, added.output
    for node in (master, replica):
        assert _events(node.address) == "AKE"
    moved = admin(c.zk_hosts, "rebalance", cluster=c.name)
    assert moved.exit_code == 0, moved.output
    k3 = _key_of(c, "g3", "new")
    pc.set(k3, "on g3")
    assert _node(master.address).get(k3) == b"on g3"
    assert pc.evalsha(sha, 1, k3) == b"on g3"
    assert pc.fcall("rp_get", 1, k3) == b"on g3"
    assert [lib[1] for lib in _node(master.address).function_list()] == [b"replay"]  # type: ignore[index]

    # a failover: the new master never ran the script
    k1 = _key_of(c, "g1", "old")
    pc.set(k1, "on g1")
    old_master = _groups(c)[0].get("g1").master  # type: ignore[union-attr]
    switched = admin(c.zk_hosts, "failover", "g1", cluster=c.name)
    assert switched.exit_code == 0, switched.output
    new_master = _groups(c)[0].get("g1").master  # type: ignore[union-attr]
    assert new_master != old_master and not _node(new_master).script_exists(sha)[0]
    wait_until(lambda: pc.evalsha(sha, 1, k1) == b"on g1", 10, "EVALSHA on the new master")
    assert pc.fcall("rp_get", 1, k1) == b"on g1"
    _node(new_master).script_flush()  # behind the proxy's back: a transaction's lease loads it again
    with pc.pipeline(transaction=True) as p:  # on a connection of its own (a lease) to the new master
        assert p.evalsha(sha, 1, k1).fcall("rp_get", 1, k1).execute() == [b"on g1", b"on g1"]

    # a node whose parameters drifted (restarted from an older config file): the sentinel leader
    # sets them back
    drifted = _groups(c)[0].get("g2").replicas[0]  # type: ignore[union-attr]
    _node(drifted).config_set("notify-keyspace-events", "")
    sentinels.start(c.zk_hosts, c.name, "--interval", "0.2")
    wait_until(lambda: _events(drifted) == "AKE", 20, "the sentinel to set it back")

