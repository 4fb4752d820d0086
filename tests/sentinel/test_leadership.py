"""Two sentinels: a dead leader's failover is finished by the next; a cut-off leader stops before another starts."""

from __future__ import annotations

import json
import signal

from sentinel_helpers import FAST, TcpProxy, event_time, wait_for

from kvstore_cluster.ops.context import HANG_AT_STEP_ENV


def test_leader_killed_mid_failover_is_resumed_by_the_next_leader(make_cluster, sentinels, store):
    cluster = make_cluster(groups=2, replicas=2, mode="datastore")
    master = cluster.nodes["g1"][0]
    first = sentinels.start(cluster.zk_hosts, cluster.name, *FAST, env={HANG_AT_STEP_ENV: "repoint"})
    second = sentinels.start(cluster.zk_hosts, cluster.name, *FAST, wait_leader=False)
    master.signal(signal.SIGKILL)
    hang = first.wait_event("test_hook_hang", step="repoint")
    assert hang["group"] == "g1"
    record = json.loads(store.client.get(f"{store.root}/failover/g1")[0])
    assert record["step"] == "repoint"
    assert store.read_groups().value.get("g1").state == "failing_over"
    candidate = record["candidate"]

    first.proc.signal(signal.SIGKILL)
    second.wait_event("leader_elected")
    done = second.wait_event("failover_done", group="g1")
    assert done["master"] == candidate
    group = store.read_groups().value.get("g1")
    assert (group.master, group.state) == (candidate, "ok")
    assert store.client.exists(f"{store.root}/failover/g1") is None
    assert not second.events("replica_promoted")  # the step already taken is not re-run in vain
    assert not second.events("failover_started")


def test_leader_cut_off_from_zookeeper_stops_acting_before_another_leads(
        make_cluster, sentinels, store, zookeeper):
    cluster = make_cluster(groups=2, replicas=1, mode="datastore")
    chroot = cluster.zk_hosts[len(zookeeper.address):]
    proxy = TcpProxy(("127.0.0.1", zookeeper.port))
    try:
        first = sentinels.start(f"127.0.0.1:{proxy.port}{chroot}", cluster.name, *FAST)
        second = sentinels.start(cluster.zk_hosts, cluster.name, *FAST, wait_leader=False)
        proxy.cut()
        # The master dies during the partition: both sentinels see it; only a connected leader may act.
        cluster.nodes["g1"][0].signal(signal.SIGKILL)
        suspended = first.wait_event("leadership_suspended")
        elected = second.wait_event("leader_elected")
        assert event_time(suspended) < event_time(elected)
        second.wait_event("failover_done", group="g1")
        for name in ("failover_started", "replica_promoted", "replica_repointed", "group_down_no_replica"):
            assert not first.events(name), f"the cut-off leader logged {name}"

        proxy.heal()
        first.wait_event("leadership_lost")
        wait_for(lambda: first.events("zookeeper_reconnected"), 20, "the first sentinel to reconnect")
        assert len(first.events("leader_elected")) == 1  # it did not come back as a second leader
        assert store.read_groups().value.get("g1").master == cluster.nodes["g1"][1].address
    finally:
        proxy.close()
