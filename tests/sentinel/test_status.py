"""sentinel_summary: what the admin's status shows of node health, the leader and failovers in progress."""

from __future__ import annotations

import signal

from sentinel_helpers import FAST, wait_for

from kvstore_admin.sentinel_summary import sentinel_summary
from kvstore_cluster import paths
from kvstore_cluster.failover_record import FailoverRecord


def test_sentinel_view_without_sentinels_reports_unknown_health(make_cluster, store):
    cluster = make_cluster(groups=2, mode="cache")
    view = sentinel_summary(store)
    assert view["leader"] is None
    assert view["sentinels"] == {}
    assert view["failovers"] == {}
    master = cluster.nodes["g1"][0].address
    assert view["nodes"][master]["health"] == "unknown"
    assert view["nodes"][master]["group"] == "g1"


def test_sentinel_view_shows_leader_health_and_failover_records(make_cluster, sentinels, store):
    cluster = make_cluster(groups=2, mode="cache")
    sentinels.start(cluster.zk_hosts, cluster.name, *FAST, sentinel_id="watcher")
    victim = cluster.nodes["g2"][0]
    wait_for(lambda: sentinel_summary(store)["nodes"][victim.address]["health"] == "up", 10, "node seen up")
    wait_for(lambda: sentinel_summary(store)["sentinels"]["watcher"]["leader"], 10, "the view to say leader")
    view = sentinel_summary(store)
    assert view["leader"] == "watcher"
    assert view["sentinels"]["watcher"]["fresh"]
    assert view["nodes"][victim.address]["probes"]["watcher"]["role"] == "master"

    victim.signal(signal.SIGKILL)
    wait_for(lambda: sentinel_summary(store)["nodes"][victim.address]["health"] == "down", 10, "node seen down")
    node = sentinel_summary(store)["nodes"][victim.address]
    assert node["down_by"] == ["watcher"] and node["down_since"] is not None

    g1 = cluster.nodes["g1"][0].address
    record = FailoverRecord("failover", "g1", g1, "127.0.0.1:1", "repoint", "watcher")
    store.client.create(paths.failover("test", "g1"), record.encode())
    try:
        assert sentinel_summary(store)["failovers"] == {"g1": record.to_json()}
    finally:
        store.client.delete(paths.failover("test", "g1"))
