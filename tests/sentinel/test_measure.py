"""Reported, not asserted: time from SIGKILL of a datastore master to the new master in ZooKeeper (defaults)."""

from __future__ import annotations

import signal
import statistics
import time

import pytest
import redis
from sentinel_helpers import wait_for

from kvstore_cluster.store import ClusterStore, connect

RUNS = 3


@pytest.mark.slow
def test_report_unplanned_failover_time_with_default_settings(make_cluster, sentinels, zk_hosts):
    times = []
    client = connect(zk_hosts)
    try:
        for run in range(RUNS):
            name = f"measure{run}"
            cluster = make_cluster(groups=2, replicas=1, mode="datastore", name=name)
            store = ClusterStore(client, name)
            sentinel = sentinels.start(cluster.zk_hosts, name)  # default interval / down-after
            master = cluster.nodes["g1"][0]
            # Let it see the node healthy for a few rounds, as in production.
            wait_for(lambda s=sentinel: len(s.events()) >= 2, 10, "the sentinel to settle")
            time.sleep(1.0)  # steady state before the fault, not synchronisation
            redis.Redis(port=master.port).set("k", "v")
            killed = time.monotonic()
            master.signal(signal.SIGKILL)
            changed = wait_for(lambda st=store, a=master.address: st.read_groups().value.get("g1").master != a,
                               20, "the master to change")
            times.append(changed - killed)
            sentinel.stop()
    finally:
        client.stop()
        client.close()
    print(f"\nSIGKILL -> new master in ZooKeeper (interval 0.5 s, down-after 2 s): "
          f"median {statistics.median(times):.2f} s, runs {[round(t, 2) for t in times]}")
    assert all(t < 10 for t in times)
