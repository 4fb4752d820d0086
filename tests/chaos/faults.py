"""The faults: each injects one failure into a running cluster, bounds it in time, undoes it, says what happened.

Every fault returns the ``FaultRecord`` s its contract is judged by (contracts.py). Undoing is in a
``finally``: a fault that goes wrong half-way still resumes, restarts or heals what it broke
before its error propagates. Sleeping is only ever the *duration* of a fault; everything that
waits for the cluster to react polls with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from chaos.cluster import ChaosCluster, info_replication
from chaos.contracts import FaultRecord, lossy_crash
from kvstore_admin.processes import wait_until
from kvstore_cluster import paths
from kvstore_cluster.proxy_registration import MIGRATION

now = time.monotonic


def _failed_over(c: ChaosCluster, gid: str, old: str) -> bool:
    group = c.groups().get(gid)
    return group is not None and group.master != old and group.state == "ok"


def _rejoined(c: ChaosCluster, gid: str, old: str) -> bool:
    """``old`` (a former master) follows its group's current master with the link up."""
    master = c.master(gid)
    info = info_replication(old)
    return (info.get("role") == "slave" and info.get("master_link_status") == "up"
            and f"{info.get('master_host')}:{info.get('master_port')}" in (master, c.real(master)))


def master_kill_restart(c: ChaosCluster, gid: str = "g1") -> list[FaultRecord]:
    """SIGKILL a master; after the sentinel promoted a replica, restart it (empty) to rejoin as a replica."""
    old, slots = c.master(gid), c.group_slots(gid)
    t0 = now()
    c.node(old).signal(signal.SIGKILL)
    try:
        wait_until(lambda: _failed_over(c, gid, old), 30, f"failover of {gid} after SIGKILL of {old}")
    finally:
        # Restarted only after the failover: an empty master coming back *before* it would have its
        # replicas resync from it and drop everything (no persistence here; docs/contracts.md).
        c.restart_redis(old)
    wait_until(lambda: _rejoined(c, gid, old), 30, f"{old} to rejoin {gid} as a replica")
    return [lossy_crash("master SIGKILL", gid, slots, t0, now(), c.mode)]


def master_pause(c: ChaosCluster, seconds: float, gid: str = "g1", expect_failover: bool = False) -> list[FaultRecord]:
    """SIGSTOP a master for ``seconds``, then SIGCONT. Short: no failover allowed. Long: a failover, bounded loss."""
    old, slots = c.master(gid), c.group_slots(gid)
    proc = c.node(old)
    t0 = now()
    proc.signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)  # the fault's duration
    finally:
        proc.signal(signal.SIGCONT)
    if not expect_failover:
        assert c.master(gid) == old, f"false failover: {gid} moved off {old} after a {seconds:g}s pause"
        return [FaultRecord(f"master SIGSTOP {seconds:g}s", gid, slots, t0, now())]
    wait_until(lambda: _failed_over(c, gid, old), 30, f"failover of {gid} after a {seconds:g}s SIGSTOP")
    wait_until(lambda: _rejoined(c, gid, old), 30, f"{old} to rejoin {gid} as a replica")
    return [lossy_crash(f"master SIGSTOP {seconds:g}s", gid, slots, t0, now(), c.mode)]


def proxy_kill_restart(c: ChaosCluster, down_for: float = 1.0) -> list[FaultRecord]:
    """SIGKILL a proxy (each time the next one); restart it on the same port ``down_for`` seconds later."""
    proc = c.proxies[c.proxy_kills % len(c.proxies)]
    c.proxy_kills += 1
    t0 = now()
    proc.signal(signal.SIGKILL)
    try:
        time.sleep(down_for)  # the fault's duration
    finally:
        c.restart_proxy(proc.port)
    return [FaultRecord("proxy SIGKILL", t0=t0, t1=now())]


def sentinel_leader_kill(c: ChaosCluster, gid: str = "g2") -> list[FaultRecord]:
    """SIGKILL the sentinel leader together with a master: the standby must take over and fail over."""
    leader = c.leader()
    assert leader in c.sentinels, f"leader {leader!r} is not one of ours ({sorted(c.sentinels)})"
    old, slots = c.master(gid), c.group_slots(gid)
    t0 = now()
    c.sentinels[leader].signal(signal.SIGKILL)
    c.node(old).signal(signal.SIGKILL)
    try:
        wait_until(lambda: c.leader() not in (None, leader), 30, f"a new sentinel leader after killing {leader}")
        wait_until(lambda: _failed_over(c, gid, old), 30, f"the new leader to fail {gid} over")
    finally:
        c.restart_sentinel(leader)
        c.restart_redis(old)
    wait_until(lambda: _rejoined(c, gid, old), 30, f"{old} to rejoin {gid} as a replica")
    return [lossy_crash("sentinel leader + master SIGKILL", gid, slots, t0, now(), c.mode)]


def zookeeper_pause(c: ChaosCluster, seconds: float = 7.0) -> list[FaultRecord]:
    """SIGSTOP ZooKeeper past the proxies' session timeout: they fence (-TRYAGAIN), then recover."""
    t0 = now()
    c.zookeeper.signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)  # the fault's duration
    finally:
        c.zookeeper.signal(signal.SIGCONT)
    return [FaultRecord(f"ZooKeeper SIGSTOP {seconds:g}s", t0=t0, t1=now())]


def slow_link(c: ChaosCluster, gid: str = "g1", stall: float = 6.5) -> list[FaultRecord]:
    """Latency and jitter on the link to a master, then a stall longer than the proxy's backend timeout."""
    link = c.links[c.master(gid)]
    t0 = now()
    try:
        link.slow(0.03, 0.07)
        time.sleep(2.0)  # the fault's duration: slow
        link.stall()
        time.sleep(stall)  # stalled: the proxy times requests out; they still reach Redis afterwards
        link.slow(0.05, 0.05)
        time.sleep(1.0)
    finally:
        link.heal()
    return [FaultRecord("slow link", gid, t0=t0, t1=now())]


# --- resharding and switchover -------------------------------------------------------------------


def reshard_unsupported(c: ChaosCluster) -> str | None:
    """Why a reshard cannot run against this cluster's proxies, or None."""
    probe = _admin(c, "reshard", "--help", timeout=60)
    if probe.returncode != 0:
        return "kvstore-admin has no reshard command yet"
    assert c.store is not None
    proxies = c.store.proxies()
    old = [*(pid for pid, reg in proxies.items.items() if not reg.speaks(MIGRATION)), *proxies.malformed]
    if old:
        return (f"the proxies do not move keys of migrating slots yet (no 'migration' in their registration: "
                f"{', '.join(sorted(old))}); kvstore-admin reshard refuses to run against them")
    return None


def _admin(c: ChaosCluster, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", "from kvstore_admin.cli import main; main()", "--zk", c.zk_hosts,
            "--cluster", c.name, *c.admin_args(), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def reshard(c: ChaosCluster, slots: str = "0-2999", there: str = "g2", back: str = "g1") -> list[FaultRecord]:
    """Move ``slots`` to ``there`` and back while the workload runs (kvstore-admin reshard, a real process)."""
    why = reshard_unsupported(c)
    if why:
        pytest.skip(why)
    t0 = now()
    for to in (there, back):
        done = _admin(c, "reshard", "--slots", slots, "--to", to)
        assert done.returncode == 0, f"reshard to {to} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return [FaultRecord(f"reshard {slots} {there} and back", t0=t0, t1=now())]


def switchover_with_faults(c: ChaosCluster, gid: str = "g1") -> list[FaultRecord]:
    """A manual switchover while a proxy is killed and restarted, and a reshard runs if the proxies support it.

    The switchover is ``kvstore-admin failover GROUP`` as an operator runs it (a process).
    """
    assert c.store is not None
    old = c.master(gid)
    t0 = now()
    results: dict[str, Any] = {}

    def run(name: str, fn: Any) -> threading.Thread:
        def body() -> None:
            try:
                results[name] = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in the test's thread
                results[name] = exc

        t = threading.Thread(target=body, name=name, daemon=True)
        t.start()
        return t

    def failover() -> None:
        done = _admin(c, "failover", gid)
        assert done.returncode == 0, f"failover {gid} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"

    threads = [run("switchover", failover)]
    can_reshard = reshard_unsupported(c) is None
    if can_reshard:
        threads.append(run("reshard", lambda: reshard(c, "9000-11999", "g1", "g2")))
    records = proxy_kill_restart(c, down_for=1.0)
    for t in threads:
        t.join(240)
        assert not t.is_alive(), f"{t.name} did not finish"
    for name, result in results.items():
        if isinstance(result, BaseException):
            raise AssertionError(f"{name} failed: {result}") from result
    assert c.master(gid) != old, f"{gid} still has master {old} after the switchover"
    wait_until(lambda: _rejoined(c, gid, old), 30, f"{old} to follow {gid}'s new master")
    label = "switchover + proxy SIGKILL" + (" + reshard" if can_reshard else "")
    return [*records, FaultRecord(label, gid, t0=t0, t1=now())]


# --- cache mode -----------------------------------------------------------------------------------


def cache_node_kill(c: ChaosCluster, gid: str = "g1", down_for: float = 2.0) -> list[FaultRecord]:
    """SIGKILL a cache node: its group is removed (slots spread); then restart it.

    With ``--auto-rejoin`` the sentinel flushes it and rebalances slots (with their keys) to its
    group again; without, the group stays down until an operator rejoins it.
    """
    old, slots = c.master(gid), c.group_slots(gid)
    t0 = now()
    c.node(old).signal(signal.SIGKILL)
    try:
        wait_until(lambda: c.groups().get(gid).state == "down", 30, f"{gid} to be removed")  # type: ignore[union-attr]
        removed = now()
        time.sleep(down_for)  # the fault's duration: the node stays dead a little longer
    finally:
        c.restart_redis(old)
    if c.auto_rejoin:
        wait_until(lambda: c.groups().get(gid).state == "ok", 30, f"{gid} to rejoin")  # type: ignore[union-attr]
        # The leader then rebalances, moving keys of healthy groups to the rejoined one. Those keys
        # are the rejoined node's from then on (a cache loses them if it fails again), but the
        # checker attributes a loss to the slots a group owned when it was killed: let the
        # rebalance finish before the next round.
        assert c.store is not None
        wait_until(lambda: c.store.client.exists(paths.reshard(c.name)) is None and bool(c.group_slots(gid)),
                   60, f"the rebalance giving {gid} slots to finish")
    # Proxies apply the removal within milliseconds; 1 s covers requests already on their way.
    return [lossy_crash("cache node SIGKILL", gid, slots, t0, removed + 1.0, c.mode)]
