"""Every fault under a recorded workload, each judged by its mode's contract (docs/contracts.md).

CI-sized by default (each fault once, a few minutes in all); ``KVSTORE_CHAOS_SECONDS=1200``
(``make chaos``) shares 20 minutes among the faults, repeating each while its share lasts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import faults
from chaos.runner import fault_timeout, run_fault

pytestmark = pytest.mark.timeout(fault_timeout())


def test_master_sigkill_loses_only_unreplicated_writes(chaos_cluster, tmp_path: Path) -> None:
    c = chaos_cluster()
    # with transactions and a blocking queue: all or nothing, each element taken once or unknown
    run_fault(c, "master SIGKILL + restart (+ stateful)", faults.master_kill_restart, tmp_path, stateful=2)


def test_master_paused_shorter_than_down_after_loses_nothing_and_stays_master(chaos_cluster, tmp_path: Path) -> None:
    c = chaos_cluster()
    run_fault(c, "master SIGSTOP 0.8s (< down-after)", lambda c: faults.master_pause(c, 0.8), tmp_path)


def test_master_paused_longer_than_down_after_fails_over_with_bounded_loss(chaos_cluster, tmp_path: Path) -> None:
    c = chaos_cluster()
    run_fault(c, "master SIGSTOP 5s (> down-after)", lambda c: faults.master_pause(c, 5.0, expect_failover=True),
              tmp_path)


def test_proxy_sigkill_and_restart_loses_nothing(chaos_cluster, tmp_path: Path) -> None:
    c = chaos_cluster()
    run_fault(c, "proxy SIGKILL + restart", faults.proxy_kill_restart, tmp_path)


def test_sentinel_leader_killed_with_a_master_the_standby_fails_over(chaos_cluster, tmp_path: Path) -> None:
    c = chaos_cluster()
    run_fault(c, "sentinel leader + master SIGKILL", faults.sentinel_leader_kill, tmp_path)


def test_zookeeper_paused_proxies_fence_and_lose_nothing(chaos_cluster, tmp_path: Path) -> None:
    c = chaos_cluster()
    run_fault(c, "ZooKeeper SIGSTOP 7s", faults.zookeeper_pause, tmp_path, expect_errors=("TRYAGAIN",))


def test_slow_link_to_a_master_loses_nothing(chaos_cluster, tmp_path: Path) -> None:
    # The sentinel must not call a stalled-but-alive master down here: that is the long-pause case.
    c = chaos_cluster(linked=("g1",), sentinel_args=("--interval", "0.25", "--down-after", "12",
                                                     "--zk-session-timeout", "3"))
    run_fault(c, "slow link proxy->master (latency, 6.5s stall)", faults.slow_link, tmp_path,
              expect_errors=("timeout: no reply",))


def test_reshard_under_load_loses_nothing(chaos_cluster, tmp_path: Path) -> None:
    c = chaos_cluster()
    why = faults.reshard_unsupported(c)
    if why:
        pytest.skip(why)
    run_fault(c, "reshard 3000 slots there and back (+ stateful)", faults.reshard, tmp_path, stateful=2)


def test_switchover_during_proxy_kill_and_reshard_loses_nothing(chaos_cluster, tmp_path: Path) -> None:
    c = chaos_cluster()
    run_fault(c, "switchover + proxy SIGKILL (+ reshard if supported)", faults.switchover_with_faults, tmp_path)


def test_cache_node_killed_loses_only_its_own_keys(chaos_cluster, tmp_path: Path) -> None:
    c = chaos_cluster(mode="cache", groups=3, replicas=0)
    # Once: the group stays down afterwards, and the last healthy groups are never removed.
    run_fault(c, "cache node SIGKILL + restart (stays down)", faults.cache_node_kill, tmp_path, max_rounds=1)


def test_cache_node_auto_rejoin_keeps_the_other_groups_keys(chaos_cluster, tmp_path: Path) -> None:
    c = chaos_cluster(mode="cache", groups=3, replicas=0, auto_rejoin=True)
    run_fault(c, "cache node SIGKILL + auto-rejoin", faults.cache_node_kill, tmp_path)
