"""CONFIG through the proxy: GET from the masters, SET of tunables on every node and in ZooKeeper, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from kvstore_admin.processes import wait_until
from kvstore_cluster.node_config import NodeConfig, refusal
from kvstore_cluster.store import ClusterStore

from .admin_helpers import admin
from .conftest import ProxyCluster


def _record(c: ProxyCluster) -> NodeConfig:
    client = c.zk()
    try:
        return ClusterStore(client, c.name).read_node_config().value
    finally:
        client.stop()
        client.close()



def test_the_policy_says_why() -> None:
    assert refusal("maxmemory-policy") is None and refusal("NOTIFY-KEYSPACE-EVENTS") is None
    assert "replication is managed" in refusal("replicaof")  # type: ignore[operator]
    assert "not a Redis Cluster" in refusal("cluster-node-timeout")  # type: ignore[operator]
    assert "persistence" in refusal("save")  # type: ignore[operator]
    assert "not known to be safe" in refusal("no-such-thing")  # type: ignore[operator]
    with pytest.raises(ValueError, match="not a parameter set cluster-wide"):
        NodeConfig.decode(b'{"params":{"port":"1"}}')
    with pytest.raises(ValueError, match="missing field 'params'"):
        NodeConfig.decode(b"{}")


def test_config_get_set_and_refusals(shared_cluster: ProxyCluster) -> None:
    c = shared_cluster
    pc = c.proxy.client()  # type: ignore[union-attr]
    assert pc.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert pc.config_set("notify-keyspace-events", "KEA") is True
    assert pc.config_set("maxmemory-policy", "allkeys-lru") is True
    # on every group's master at once (the next request already sees it)
    assert {c.direct(g).config_get("maxmemory-policy")["maxmemory-policy"] for g in c.nodes} == {"allkeys-lru"}
    assert pc.config_get("notify-keyspace-events")["notify-keyspace-events"] == "AKE"
    # kept in ZooKeeper, as the masters report the values
    wait_until(lambda: _record(c).params.get("notify-keyspace-events") == "AKE"
               and _record(c).params.get("maxmemory-policy") == "allkeys-lru", 10, "the record")
    # several at once; a value a node refuses is the client's error
    assert pc.execute_command("CONFIG", "SET", "hz", "15", "slowlog-max-len", "200") == b"OK"
    with pytest.raises(redis.ResponseError, match="argument|Invalid|must be"):
        pc.config_set("maxmemory-policy", "sideways")
    for name, why in [("port", "reach each node"), ("save", "persistence"), ("requirepass", "--redis-password"),
                      ("replicaof", "replication is managed"), ("cluster-enabled", "not a Redis Cluster"),
                      ("timeout", "proxies' own connections"), ("no-such-thing", "not known to be safe")]:
        with pytest.raises(redis.ResponseError, match=why):
            pc.config_set(name, "1")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        pc.execute_command("CONFIG", "SET", "hz")
    with pytest.raises(redis.ResponseError, match="Duplicate parameter"):
        pc.execute_command("CONFIG", "SET", "hz", "10", "hz", "11")
    pc.config_set("maxmemory-policy", "noeviction")
    pc.config_set("notify-keyspace-events", "")


def test_a_parameter_that_differs_between_groups_is_flagged(shared_cluster: ProxyCluster) -> None:
    c = shared_cluster
    pc = c.proxy.client()  # type: ignore[union-attr]
    pc.config_set("hz", "10")
    assert admin(c.zk_hosts, "check", cluster=c.name).exit_code == 0
    c.direct("g2").config_set("hz", "33")  # behind the proxy's back
    assert pc.config_get("hz") == {"hz": "10"}  # the first group's value...
    wait_until(lambda: "config_differs" in c.proxy.output(), 10, "the proxy to log it")  # type: ignore[union-attr]
    found = admin(c.zk_hosts, "check", "--json", cluster=c.name)
    assert found.exit_code == 16, found.output
    assert json.loads(found.output)["config_differs"]["hz"] == {"g1": "10", "g2": "33", "g3": "10"}
    assert "config hz differs between groups" in admin(c.zk_hosts, "check", cluster=c.name).output
    pc.config_set("hz", "10")  # ... and setting it through the proxy repairs it
    assert admin(c.zk_hosts, "check", cluster=c.name).exit_code == 0


def test_resetstat_and_rewrite_reach_every_node(shared_cluster: ProxyCluster) -> None:
    c = shared_cluster
    pc = c.proxy.client()  # type: ignore[union-attr]
    for i in range(20):
        pc.set(f"rs:{i}", i)
    assert pc.config_resetstat() is True
    for g in c.nodes:
        assert "cmdstat_set" not in c.direct(g).info("commandstats")
    assert "cmdstat_set" not in pc.info("commandstats")  # the proxy's own statistics too
    pc.config_set("slowlog-max-len", "321")
    assert pc.config_rewrite() in (True, b"OK")
    for node in c.nodes.values():
        assert "slowlog-max-len 321" in (Path(node.log).parent / "redis.conf").read_text()
