"""Quorum: the leader acts only when enough fresh sentinel views agree that a node is down."""

from __future__ import annotations

import signal
import time

from sentinel_helpers import FAST, wait_for


def test_leader_waits_for_quorum_of_fresh_views(make_cluster, sentinels, store):
    cluster = make_cluster(groups=2, mode="cache")
    leader = sentinels.start(cluster.zk_hosts, cluster.name, *FAST, "--quorum", "2")
    other = sentinels.start(cluster.zk_hosts, cluster.name, *FAST, "--quorum", "2", wait_leader=False)
    victim = cluster.nodes["g1"][0]
    wait_for(lambda: len(store.sentinel_views().items) == 2, 10, "both views published")
    other.proc.signal(signal.SIGSTOP)  # its view goes stale: only one vote left
    try:
        victim.signal(signal.SIGKILL)
        leader.wait_event("node_down", node=victim.address)
        time.sleep(3.0)  # the window in which a wrong leader would act; not synchronisation
        assert not leader.events("group_removed")
        assert store.read_groups().value.get("g1").state == "ok"
    finally:
        other.proc.signal(signal.SIGCONT)
    leader.wait_event("group_removed", group="g1")
    assert store.read_groups().value.get("g1").state == "down"
