"""Cache mode: a failed group's slots go to the others in one transaction; recovered nodes rejoin flushed."""

from __future__ import annotations

import asyncio
import signal
import time

import redis
from sentinel_helpers import FAST, restart_redis, wait_for

from kvstore_cluster import paths
from kvstore_cluster.ops.cache import rejoin
from kvstore_cluster.ops.context import Context
from kvstore_cluster.ops.errors import RejoinError
from kvstore_cluster.ops.fence import NO_FENCE
from kvstore_cluster.slots import SLOT_COUNT


def rejoin_group(store, group_id):  # type: ignore[no-untyped-def]
    """What 'kvstore-admin group rejoin --no-rebalance' runs."""
    return asyncio.run(rejoin(Context(store, node_timeout=5.0), NO_FENCE, group_id))


def _state(store, gid):  # type: ignore[no-untyped-def]
    return store.read_groups().value.get(gid).state


def test_killed_cache_node_slots_spread_over_the_others_in_one_transaction(make_cluster, sentinels, store):
    cluster = make_cluster(groups=3, mode="cache")
    sentinel = sentinels.start(cluster.zk_hosts, cluster.name, *FAST)
    cluster.nodes["g2"][0].signal(signal.SIGKILL)
    wait_for(lambda: _state(store, "g2") == "down", 15, "g2 to be marked down")
    counts = store.read_slots().value.counts()
    assert set(counts) == {"g1", "g3"}
    assert sum(counts.values()) == SLOT_COUNT
    assert abs(counts["g1"] - counts["g3"]) <= 1
    # One transaction: both znodes changed once, by the same ZooKeeper transaction id.
    _, gstat = store.client.get(paths.groups("test"))
    _, sstat = store.client.get(paths.slots("test"))
    assert (gstat.version, sstat.version) == (1, 1)
    assert gstat.mzxid == sstat.mzxid
    sentinel.wait_event("group_removed", group="g2")
    # Without --auto-rejoin a returning node waits for the admin.
    assert sentinel.alive()


def test_auto_rejoin_flushes_the_node_then_rebalances_it_a_fair_share_with_the_keys(
        make_cluster, sentinels, store, redis_factory):
    cluster = make_cluster(groups=2, mode="cache")
    node = cluster.nodes["g1"][0]
    sentinel = sentinels.start(cluster.zk_hosts, cluster.name, *FAST, "--auto-rejoin")
    node.signal(signal.SIGKILL)
    wait_for(lambda: _state(store, "g1") == "down", 15, "g1 to be marked down")
    assert store.read_slots().value.counts() == {"g2": SLOT_COUNT}
    survivor = redis.Redis(port=cluster.nodes["g2"][0].port)
    survivor.mset({f"k{i}": i for i in range(2000)})  # written while g2 served every slot
    back = restart_redis(redis_factory, node)
    stale = redis.Redis(port=back.port)
    stale.set("stale-key", "old")  # what a node may hold when it comes back
    wait_for(lambda: _state(store, "g1") == "ok", 15, "g1 to rejoin")
    # Slots come back with their keys, through the data-moving rebalance the leader starts.
    wait_for(lambda: store.read_slots().value.counts() == {"g1": SLOT_COUNT // 2, "g2": SLOT_COUNT // 2}
             and store.client.exists(paths.reshard(cluster.name)) is None, 60, "the rebalance to finish")
    assert stale.get("stale-key") is None
    assert stale.dbsize() > 0 and stale.dbsize() + survivor.dbsize() == 2000  # moved, none lost
    sentinel.wait_event("group_rejoined", group="g1")
    sentinel.wait_event("rebalance_done")


def test_without_auto_rejoin_the_node_waits_for_rejoin_group(make_cluster, sentinels, store, redis_factory):
    cluster = make_cluster(groups=2, mode="cache")
    node = cluster.nodes["g2"][0]
    sentinel = sentinels.start(cluster.zk_hosts, cluster.name, *FAST)
    node.signal(signal.SIGKILL)
    wait_for(lambda: _state(store, "g2") == "down", 15, "g2 to be marked down")
    back = restart_redis(redis_factory, node)
    redis.Redis(port=back.port).set("stale-key", "old")
    sentinel.wait_event("group_awaiting_rejoin", group="g2")
    assert _state(store, "g2") == "down"
    try:
        rejoin_group(store, "g1")
        raise AssertionError("rejoining an ok group must fail")
    except RejoinError as exc:
        assert "not down" in str(exc)
    assert rejoin_group(store, "g2") == 0
    assert _state(store, "g2") == "ok"
    assert redis.Redis(port=back.port).dbsize() == 0


def test_last_healthy_group_is_never_removed(make_cluster, sentinels, store):
    cluster = make_cluster(groups=2, mode="cache")
    sentinel = sentinels.start(cluster.zk_hosts, cluster.name, *FAST)
    cluster.nodes["g1"][0].signal(signal.SIGKILL)
    wait_for(lambda: _state(store, "g1") == "down", 15, "g1 to be marked down")
    cluster.nodes["g2"][0].signal(signal.SIGKILL)
    sentinel.wait_event("last_group_kept", group="g2")
    assert _state(store, "g2") == "ok"
    assert store.read_slots().value.counts() == {"g2": SLOT_COUNT}
    assert sentinel.alive()


def test_pause_shorter_than_down_after_causes_no_failover_longer_does(make_cluster, sentinels, store):
    cluster = make_cluster(groups=2, mode="cache")
    sentinel = sentinels.start(cluster.zk_hosts, cluster.name, "--interval", "0.2", "--down-after", "1.5")
    node = cluster.nodes["g1"][0]
    for _ in range(2):
        node.signal(signal.SIGSTOP)
        time.sleep(0.7)  # the fault itself, not synchronisation: a pause well under down-after
        node.signal(signal.SIGCONT)
        time.sleep(0.6)
    assert not sentinel.events("node_down")
    assert not sentinel.events("group_removed")
    assert _state(store, "g1") == "ok"
    node.signal(signal.SIGSTOP)
    try:
        sentinel.wait_event("group_removed", group="g1", timeout=15)
    finally:
        node.signal(signal.SIGCONT)
    assert _state(store, "g1") == "down"
