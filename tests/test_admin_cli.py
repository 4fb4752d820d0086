"""kvstore-admin against a real ZooKeeper and real redis-servers: every command, every failure, one line each."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import redis
from click.testing import CliRunner, Result
from kazoo.client import KazooClient

from kvstore_admin.cli import cli
from kvstore_admin.processes import free_port, wait_until
from kvstore_cluster import paths
from kvstore_cluster.failover_record import FailoverRecord
from kvstore_cluster.model import Group, Groups
from kvstore_cluster.node import Node
from kvstore_cluster.proxy_registration import ProxyRegistration
from kvstore_cluster.slots import key_slot
from kvstore_cluster.store import ClusterStore

FAST_SYNC = {"repl-diskless-sync-delay": "0"}
CONSOLE_SCRIPT = Path(sys.executable).parent / "kvstore-admin"


def registration(pid: int, slots_version: int = 0, groups_version: int = 0) -> ProxyRegistration:
    return ProxyRegistration(address="127.0.0.1:7000", pid=pid, started_at=1.0, slots_version=slots_version,
                             groups_version=groups_version, fenced=False)


def admin(zk_hosts: str, *args: str, cluster: str = "c1") -> Result:
    result = CliRunner().invoke(cli, ["--zk", zk_hosts, "--cluster", cluster, "--zk-timeout", "5", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # an unexpected crash, not a reported failure
    return result


def ok(zk_hosts: str, *args: str, cluster: str = "c1") -> Result:
    result = admin(zk_hosts, *args, cluster=cluster)
    assert result.exit_code == 0, result.output
    return result


def fails(zk_hosts: str, code: int, message: str, *args: str, cluster: str = "c1") -> Result:
    """Assert the command exits with ``code`` and exactly one ``Error:`` line containing ``message``."""
    result = admin(zk_hosts, *args, cluster=cluster)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert message in lines[0], lines[0]
    return result


def start_node(redis_factory, **extra: str):  # type: ignore[no-untyped-def]
    return redis_factory.start(extra={**FAST_SYNC, **extra})


def replication(port: int) -> dict:
    return redis.Redis(port=port, socket_timeout=2).info("replication")


def groups_json(zk_hosts: str) -> list[dict]:
    return json.loads(ok(zk_hosts, "group", "list", "--json").stdout)


# --- help, connection, cluster existence --------------------------------------------------------------


def _command_paths(cmd: click.Command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            out += _command_paths(sub, (*prefix, name))
    return out


@pytest.mark.parametrize("path", _command_paths(cli), ids=lambda p: " ".join(p) or "kvstore-admin")
def test_help_works_on_every_command(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.stdout


def test_top_level_help_documents_the_exit_codes() -> None:
    out = CliRunner().invoke(cli, ["--help"]).stdout
    assert "Exit codes:" in out
    # Every code any command exits with, 'check' (10) and 'reshard'/'rebalance' (11) included.
    for code in range(12):
        assert f"  {code}  " in out
    assert "  10  check: " in out and "  11  reshard/rebalance stopped part-way" in out


def test_unreachable_zookeeper_fails_within_the_timeout_with_exit_3() -> None:
    hosts = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["--zk", hosts, "--zk-timeout", "1", "status"])
    assert result.exit_code == 3
    assert result.stderr.strip() == f"Error: cannot reach ZooKeeper at {hosts} within 1s (Connection time-out)"
    assert time.monotonic() - started < 4


def test_init_creates_the_cluster_and_a_second_init_fails_with_exit_4(zk_hosts: str, zk: KazooClient) -> None:
    assert "created cluster 'c1' in datastore mode" in ok(zk_hosts, "init", "--mode", "datastore").stdout
    assert ClusterStore(zk, "c1").read_meta().value.mode == "datastore"
    fails(zk_hosts, 4, "cluster 'c1' already exists", "init", "--mode", "cache")
    assert ClusterStore(zk, "c1").read_meta().value.mode == "datastore"


@pytest.mark.parametrize(
    "args",
    [
        ("status",), ("proxies",), ("rebalance",), ("group", "list"), ("group", "remove", "g1"),
        ("group", "add-replica", "g1", "127.0.0.1:1"), ("group", "add", "--master", "127.0.0.1:1"),
    ],
)
def test_commands_on_a_missing_cluster_fail_with_exit_4(zk_hosts: str, args: tuple[str, ...]) -> None:
    fails(zk_hosts, 4, "cluster 'c1' does not exist", *args)


def test_a_bad_cluster_name_is_refused(zk_hosts: str) -> None:
    fails(zk_hosts, 1, "bad cluster name 'a/b'", "status", cluster="a/b")


def test_init_needs_a_valid_mode(zk_hosts: str) -> None:
    result = admin(zk_hosts, "init", "--mode", "memory")
    assert result.exit_code == 2
    assert "Invalid value for '--mode'" in result.stderr


def test_corrupt_data_in_zookeeper_fails_with_exit_7(zk_hosts: str, zk: KazooClient) -> None:
    ok(zk_hosts, "init", "--mode", "cache")
    zk.set(paths.groups("c1"), b"{broken")
    fails(zk_hosts, 7, f"{paths.groups('c1')} holds malformed data", "group", "list")


# --- groups ------------------------------------------------------------------------------------------


def test_cache_mode_group_add_list_rebalance_and_remove(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    a, b = start_node(redis_factory), start_node(redis_factory)
    ok(zk_hosts, "init", "--mode", "cache")
    out = ok(zk_hosts, "group", "add", "--master", a.address).stdout
    assert f"added group g1: master {a.address}" in out and "owns no slots yet" in out
    assert "assigned 16384 unowned slots: g1 +16384" in ok(zk_hosts, "rebalance").stdout
    ok(zk_hosts, "group", "add", "--master", b.address)
    listed = groups_json(zk_hosts)
    assert [(g["id"], g["master"], g["slots"], g["ranges"]) for g in listed] == [
        ("g1", a.address, 16384, "0-16383"),
        ("g2", b.address, 0, ""),
    ]
    text = ok(zk_hosts, "group", "list").stdout
    assert "g1" in text and a.address in text and "16384" in text
    fails(zk_hosts, 1, "group g1 owns 16384 slots", "group", "remove", "g1")
    assert "removed group g2" in ok(zk_hosts, "group", "remove", "g2").stdout
    assert [g["id"] for g in groups_json(zk_hosts)] == ["g1"]
    assert b.alive()  # removal leaves the node itself alone


def test_group_ids_default_to_the_next_free_gN_and_can_be_given(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    a, b, c = (start_node(redis_factory) for _ in range(3))
    ok(zk_hosts, "init", "--mode", "cache")
    ok(zk_hosts, "group", "add", "--master", a.address)
    ok(zk_hosts, "group", "add", "--id", "g3", "--master", b.address)
    ok(zk_hosts, "group", "add", "--master", c.address)
    assert [g["id"] for g in groups_json(zk_hosts)] == ["g1", "g3", "g2"]


def test_rebalance_spreads_unowned_slots_over_ok_groups_only(zk_hosts: str, zk: KazooClient, redis_factory) -> None:  # type: ignore[no-untyped-def]
    a, b, c = (start_node(redis_factory) for _ in range(3))
    ok(zk_hosts, "init", "--mode", "cache")
    for n in (a, b, c):
        ok(zk_hosts, "group", "add", "--master", n.address)
    store = ClusterStore(zk, "c1")
    groups = store.read_groups()
    down = Group("g3", c.address, state="down")
    store.set_groups(groups.value.put(down), groups.version)
    assert "assigned 16384 unowned slots: g1 +8192, g2 +8192" in ok(zk_hosts, "rebalance").stdout
    assert store.read_slots().value.counts() == {"g1": 8192, "g2": 8192}


def test_rebalance_without_groups_is_refused(zk_hosts: str) -> None:
    ok(zk_hosts, "init", "--mode", "cache")
    fails(zk_hosts, 1, "no group in state ok", "rebalance")


def test_datastore_group_add_leaves_the_replicas_replicating(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    master, r1, r2 = (start_node(redis_factory) for _ in range(3))
    ok(zk_hosts, "init", "--mode", "datastore")
    out = ok(zk_hosts, "group", "add", "--master", master.address, "--replica", r1.address,
             "--replica", r2.address).stdout
    assert "(replicating)" in out
    for r in (r1, r2):
        info = replication(r.port)
        assert (info["role"], info["master_port"], info["master_link_status"]) == ("slave", master.port, "up")
    redis.Redis(port=master.port).set("k", "v")
    wait_until(lambda: redis.Redis(port=r2.port).get("k") == b"v", 10, "the write to reach the replica")
    assert groups_json(zk_hosts)[0]["replicas"] == [r1.address, r2.address]


def test_datastore_group_without_replica_is_added_with_a_warning(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    node = start_node(redis_factory)
    ok(zk_hosts, "init", "--mode", "datastore")
    result = ok(zk_hosts, "group", "add", "--master", node.address)
    assert "warning: group g1 has no replica" in result.stderr


def test_add_replica_makes_the_node_replicate_the_group_master(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    master, replica = start_node(redis_factory), start_node(redis_factory)
    ok(zk_hosts, "init", "--mode", "datastore")
    ok(zk_hosts, "group", "add", "--master", master.address)
    out = ok(zk_hosts, "group", "add-replica", "g1", replica.address).stdout
    assert f"added replica {replica.address} to group g1" in out
    info = replication(replica.port)
    assert (info["role"], info["master_port"], info["master_link_status"]) == ("slave", master.port, "up")
    assert groups_json(zk_hosts)[0]["replicas"] == [replica.address]


def config_file(node) -> str:  # type: ignore[no-untyped-def]
    """The node's redis.conf (start_redis writes it next to the log), as CONFIG REWRITE left it."""
    return (Path(node.log).parent / "redis.conf").read_text()


def test_remove_replica_takes_a_live_replica_out_and_stops_its_replication(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    master, r1, r2 = (start_node(redis_factory) for _ in range(3))
    ok(zk_hosts, "init", "--mode", "datastore")
    ok(zk_hosts, "group", "add", "--master", master.address, "--replica", r1.address, "--replica", r2.address)
    redis.Redis(port=master.port).set("k", "v")
    wait_until(lambda: redis.Redis(port=r1.port).get("k") == b"v", 10, "the write to reach r1")
    assert f"replicaof 127.0.0.1 {master.port}" in config_file(r1)

    result = ok(zk_hosts, "group", "remove-replica", "g1", r1.address)

    assert result.stdout.strip() == (f"removed replica {r1.address} from group g1; it no longer replicates "
                                     f"{master.address} (REPLICAOF NO ONE) and keeps running with its data")
    assert result.stderr == ""
    assert groups_json(zk_hosts)[0]["replicas"] == [r2.address]
    assert replication(r1.port)["role"] == "master" and r1.alive()
    assert redis.Redis(port=r1.port).get("k") == b"v"  # it keeps its data
    assert "replicaof" not in config_file(r1)  # and a restart does not attach it again
    assert replication(r2.port)["master_link_status"] == "up"  # the other replica is untouched


def test_remove_replica_removes_a_dead_replica_and_says_it_could_not_be_reached(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    master, dead, live = (start_node(redis_factory) for _ in range(3))
    ok(zk_hosts, "init", "--mode", "datastore")
    ok(zk_hosts, "group", "add", "--master", master.address, "--replica", dead.address, "--replica", live.address)
    dead.stop()
    started = time.monotonic()

    result = ok(zk_hosts, "group", "remove-replica", "g1", dead.address)

    assert time.monotonic() - started < 5
    assert result.stdout.strip() == (f"removed replica {dead.address} from group g1; it could not be reached, "
                                     f"so it was not told to stop replicating {master.address}")
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith(f"warning: node {dead.address} does not answer REPLICAOF NO ONE (")
    assert f"if {dead.address} comes back it still replicates {master.address}" in warning
    assert groups_json(zk_hosts)[0]["replicas"] == [live.address]


def test_remove_replica_warns_when_a_datastore_group_is_left_without_replica(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    master, replica = start_node(redis_factory), start_node(redis_factory)
    ok(zk_hosts, "init", "--mode", "datastore")
    ok(zk_hosts, "group", "add", "--master", master.address, "--replica", replica.address)
    result = ok(zk_hosts, "group", "remove-replica", "g1", replica.address)
    assert "warning: group g1 has no replica left, so it cannot fail over" in result.stderr
    assert groups_json(zk_hosts)[0]["replicas"] == []


def test_remove_replica_refuses_the_master_strangers_and_unknown_groups(zk_hosts: str, zk: KazooClient,
                                                                        redis_factory) -> None:  # type: ignore[no-untyped-def]
    m1, r1, m2 = (start_node(redis_factory) for _ in range(3))
    ok(zk_hosts, "init", "--mode", "datastore")
    ok(zk_hosts, "group", "add", "--master", m1.address, "--replica", r1.address)
    ok(zk_hosts, "group", "add", "--master", m2.address)
    fails(zk_hosts, 1, f"node {m1.address} is the master of group g1; use 'kvstore-admin failover g1' first",
          "group", "remove-replica", "g1", m1.address)
    fails(zk_hosts, 1, "unknown group 'g9' (groups: g1, g2)", "group", "remove-replica", "g9", r1.address)
    fails(zk_hosts, 1, f"node {m2.address} is not a replica of group g1 (replicas: {r1.address}); it is in group g2",
          "group", "remove-replica", "g1", m2.address)
    fails(zk_hosts, 1, f"node {r1.address} is not a replica of group g2 (replicas: none); it is in group g1",
          "group", "remove-replica", "g2", r1.address)
    fails(zk_hosts, 1, "node 127.0.0.1:1 is not a replica of group g1", "group", "remove-replica", "g1", "127.0.0.1:1")
    fails(zk_hosts, 1, "bad address 'nonsense'", "group", "remove-replica", "g1", "nonsense")
    # While a failover rewrites the group, the replica stays.
    store = ClusterStore(zk, "c1")
    groups = store.read_groups()
    store.set_groups(groups.value.put(Group("g1", m1.address, (r1.address,), "failing_over")), groups.version)
    fails(zk_hosts, 1, "group g1 is failing over; remove the replica once it is done",
          "group", "remove-replica", "g1", r1.address)
    assert groups_json(zk_hosts)[0]["replicas"] == [r1.address]
    # Nothing was sent to any node: r1 still replicates m1, m1 is still a master.
    assert replication(r1.port)["master_port"] == m1.port and replication(m1.port)["role"] == "master"


def test_remove_replica_is_version_checked(zk_hosts: str, zk: KazooClient, redis_factory,
                                           monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from kvstore_admin import groups as ops

    master, replica = start_node(redis_factory), start_node(redis_factory)
    ok(zk_hosts, "init", "--mode", "datastore")
    ok(zk_hosts, "group", "add", "--master", master.address, "--replica", replica.address)
    store = ClusterStore(zk, "c1")
    real_get = ops._get_group

    def get_and_race(groups, group_id):  # type: ignore[no-untyped-def]
        # Another admin writes the groups between our read and our commit.
        current = store.read_groups()
        store.set_groups(current.value, current.version)
        return real_get(groups, group_id)

    monkeypatch.setattr(ops, "_get_group", get_and_race)
    fails(zk_hosts, 5, "was changed by someone else meanwhile; nothing was written",
          "group", "remove-replica", "g1", replica.address)
    assert groups_json(zk_hosts)[0]["replicas"] == [replica.address]
    assert replication(replica.port)["role"] == "slave"


def test_cache_mode_accepts_replicas(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    master, replica = start_node(redis_factory), start_node(redis_factory)
    ok(zk_hosts, "init", "--mode", "cache")
    ok(zk_hosts, "group", "add", "--master", master.address, "--replica", replica.address)
    assert replication(replica.port)["master_link_status"] == "up"


def test_a_node_that_does_not_answer_ping_is_refused_with_exit_6(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    live = start_node(redis_factory)
    dead = f"127.0.0.1:{free_port()}"
    ok(zk_hosts, "init", "--mode", "datastore")
    fails(zk_hosts, 6, f"node {dead} does not answer PING", "group", "add", "--master", dead)
    fails(zk_hosts, 6, f"node {dead} does not answer PING",
          "group", "add", "--master", live.address, "--replica", dead)
    assert groups_json(zk_hosts) == []
    ok(zk_hosts, "group", "add", "--master", live.address)
    fails(zk_hosts, 6, f"node {dead} does not answer PING", "group", "add-replica", "g1", dead)


def test_a_node_already_in_a_group_is_refused(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    m1, r1, m2 = (start_node(redis_factory) for _ in range(3))
    ok(zk_hosts, "init", "--mode", "datastore")
    ok(zk_hosts, "group", "add", "--master", m1.address, "--replica", r1.address)
    fails(zk_hosts, 1, f"node {m1.address} is already master of group g1", "group", "add", "--master", m1.address)
    fails(zk_hosts, 1, f"node {r1.address} is already a replica of group g1", "group", "add", "--master", r1.address)
    fails(zk_hosts, 1, f"node {r1.address} is already a replica of group g1",
          "group", "add", "--master", m2.address, "--replica", r1.address)
    fails(zk_hosts, 1, f"node {r1.address} is already a replica of group g1", "group", "add-replica", "g1", r1.address)
    assert [g["id"] for g in groups_json(zk_hosts)] == ["g1"]


def test_a_replica_that_is_a_master_elsewhere_is_refused(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    m1, m2 = start_node(redis_factory), start_node(redis_factory)
    ok(zk_hosts, "init", "--mode", "datastore")
    ok(zk_hosts, "group", "add", "--master", m1.address)
    ok(zk_hosts, "group", "add", "--master", m2.address)
    fails(zk_hosts, 1, f"node {m1.address} is the master of group g1; it cannot be a replica elsewhere",
          "group", "add-replica", "g2", m1.address)
    assert replication(m1.port)["role"] == "master"


def test_a_live_master_with_replicas_of_its_own_is_not_made_a_replica(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    master, outsider = start_node(redis_factory), start_node(redis_factory)
    outsider_replica = redis_factory.start(replicaof=outsider.address, extra=FAST_SYNC)
    wait_until(lambda: replication(outsider.port)["connected_slaves"] >= 1, 10, "the outsider's replica")
    ok(zk_hosts, "init", "--mode", "datastore")
    fails(zk_hosts, 1, f"node {outsider.address} is a master with 1 replica(s) of its own",
          "group", "add", "--master", master.address, "--replica", outsider.address)
    fails(zk_hosts, 1, f"node {outsider_replica.address} is a replica of {outsider.address}",
          "group", "add", "--master", outsider_replica.address)
    assert replication(outsider.port)["role"] == "master"


@pytest.mark.parametrize("bad", ["127.0.0.1", "127.0.0.1:0", "host:port", ":6379", "127.0.0.1:99999"])
def test_malformed_addresses_are_refused(zk_hosts: str, redis_factory, bad: str) -> None:  # type: ignore[no-untyped-def]
    node = start_node(redis_factory)
    ok(zk_hosts, "init", "--mode", "cache")
    fails(zk_hosts, 1, f"bad address {bad!r}", "group", "add", "--master", bad)
    fails(zk_hosts, 1, f"bad address {bad!r}", "group", "add", "--master", node.address, "--replica", bad)
    ok(zk_hosts, "group", "add", "--master", node.address)
    fails(zk_hosts, 1, f"bad address {bad!r}", "group", "add-replica", "g1", bad)


def test_bad_or_taken_group_ids_and_repeated_nodes_are_refused(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    a, b = start_node(redis_factory), start_node(redis_factory)
    ok(zk_hosts, "init", "--mode", "cache")
    ok(zk_hosts, "group", "add", "--master", a.address)
    fails(zk_hosts, 1, "group g1 already exists", "group", "add", "--id", "g1", "--master", b.address)
    fails(zk_hosts, 1, "bad group name 'no/slash'", "group", "add", "--id", "no/slash", "--master", b.address)
    fails(zk_hosts, 1, f"node {b.address} is given twice",
          "group", "add", "--master", b.address, "--replica", b.address)


def test_unknown_groups_are_refused(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    node = start_node(redis_factory)
    ok(zk_hosts, "init", "--mode", "cache")
    fails(zk_hosts, 1, "unknown group 'g9' (groups: none)", "group", "remove", "g9")
    fails(zk_hosts, 1, "unknown group 'g9'", "group", "add-replica", "g9", node.address)


def test_replication_that_never_comes_up_fails_with_exit_6_and_writes_nothing(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    master = start_node(redis_factory)
    # AUTH against a master without a password fails, so this replica's link never comes up.
    replica = start_node(redis_factory, masterauth="wrong")
    ok(zk_hosts, "init", "--mode", "datastore")
    started = time.monotonic()
    fails(zk_hosts, 6, f"replica {replica.address} did not reach master_link_status:up with {master.address} "
          "within 1s", "group", "add", "--repl-timeout", "1", "--master", master.address, "--replica", replica.address)
    assert time.monotonic() - started < 5
    assert groups_json(zk_hosts) == []


def test_a_concurrent_change_makes_group_add_fail_with_exit_5(zk_hosts: str, zk: KazooClient, redis_factory,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    node = start_node(redis_factory)
    ok(zk_hosts, "init", "--mode", "cache")
    store = ClusterStore(zk, "c1")
    real_ping = Node.ping

    async def ping_and_race(self: Node) -> None:
        # Another admin writes the groups between our read and our commit.
        groups = store.read_groups()
        store.set_groups(groups.value, groups.version)
        await real_ping(self)

    monkeypatch.setattr(Node, "ping", ping_and_race)
    fails(zk_hosts, 5, "was changed by someone else meanwhile; nothing was written",
          "group", "add", "--master", node.address)
    assert store.read_groups().value == Groups()


# --- nodes with a password (requirepass) ---------------------------------------------------------------

PASSWORD = "s3cret-pw"


def test_every_admin_redis_call_uses_the_redis_password(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    """group add (with replication), status, reshard with keys (MIGRATE ... AUTH), check, remove-replica,
    failover, all against nodes with requirepass; the password from --redis-password or the environment."""
    m1, r1, m2, r2 = (redis_factory.start(password=PASSWORD, extra=FAST_SYNC) for _ in range(4))
    pw = ("--redis-password", PASSWORD)
    ok(zk_hosts, "init", "--mode", "datastore")
    # Without the password: one clear line saying what to do, nothing written.
    fails(zk_hosts, 6, f"node {m1.address} requires a password (give the nodes' password with --redis-password "
          "or KVSTORE_REDIS_PASSWORD)", "group", "add", "--master", m1.address)
    fails(zk_hosts, 6, f"node {m1.address} refused the password (", "--redis-password", "wrong",
          "group", "add", "--master", m1.address)
    assert groups_json(zk_hosts) == []

    ok(zk_hosts, *pw, "group", "add", "--id", "g1", "--master", m1.address, "--replica", r1.address)
    added = CliRunner(env={"KVSTORE_REDIS_PASSWORD": PASSWORD}).invoke(
        cli, ["--zk", zk_hosts, "--cluster", "c1", "group", "add", "--id", "g2", "--master", m2.address,
              "--replica", r2.address])
    assert added.exit_code == 0, added.output
    for master, replica in ((m1, r1), (m2, r2)):
        info = redis.Redis(port=replica.port, password=PASSWORD).info("replication")
        assert (info["role"], info["master_port"], info["master_link_status"]) == ("slave", master.port, "up")
    ok(zk_hosts, *pw, "rebalance")

    status = json.loads(ok(zk_hosts, *pw, "status", "--json").stdout)
    assert status["healthy"] is True, status["problems"]
    assert [n["up"] for g in status["groups"] for n in g["nodes"]] == [True] * 4
    blind = json.loads(ok(zk_hosts, "status", "--json").stdout)
    assert blind["healthy"] is False
    assert all("--redis-password" in n["error"] for g in blind["groups"] for n in g["nodes"])

    g1 = redis.Redis(port=m1.port, password=PASSWORD)
    keys = [k for k in (f"key:{i}".encode() for i in range(20000)) if key_slot(k) < 2000][:500]
    assert len(keys) == 500
    pipe = g1.pipeline(transaction=False)
    for k in keys:
        pipe.set(k, k, ex=1000)
    pipe.execute()
    fails(zk_hosts, 6, f"node {m1.address} requires a password", "check")
    moved = json.loads(ok(zk_hosts, *pw, "reshard", "--slots", "0-1999", "--to", "g2", "--json").stdout)
    assert (moved["slots_moved"], moved["keys_moved"]) == (2000, 500)
    g2 = redis.Redis(port=m2.port, password=PASSWORD)
    assert g1.exists(*keys) == 0 and g2.exists(*keys) == 500 and 900 < g2.ttl(keys[0]) <= 1000
    checked = json.loads(ok(zk_hosts, *pw, "check", "--json").stdout)
    assert checked["ok"] is True and checked["misplaced"] == 0
    assert sum(g["keys"] for g in checked["groups"]) == 500

    ok(zk_hosts, *pw, "failover", "g2")
    assert groups_json(zk_hosts)[1]["master"] == r2.address
    out = ok(zk_hosts, *pw, "group", "remove-replica", "g1", r1.address).stdout
    assert "it no longer replicates" in out
    assert redis.Redis(port=r1.port, password=PASSWORD).info("replication")["role"] == "master"


# --- status and proxies ------------------------------------------------------------------------------


def test_status_shows_groups_slots_and_live_node_health(zk_hosts: str, zk: KazooClient, redis_factory) -> None:  # type: ignore[no-untyped-def]
    nodes_of = {gid: [start_node(redis_factory), start_node(redis_factory)] for gid in ("g1", "g2")}
    ok(zk_hosts, "init", "--mode", "datastore")
    for gid, (master, replica) in nodes_of.items():
        ok(zk_hosts, "group", "add", "--id", gid, "--master", master.address, "--replica", replica.address)
    ok(zk_hosts, "rebalance")
    ClusterStore(zk, "c1").register_proxy("p1", registration(pid=1))
    text = ok(zk_hosts, "status").stdout
    assert "cluster c1 (datastore mode)" in text and "slots: 16384/16384 owned" in text
    assert "healthy" in text and "proxies: 1" in text
    data = json.loads(ok(zk_hosts, "status", "--json").stdout)
    assert data["mode"] == "datastore" and data["healthy"] is True and data["problems"] == []
    assert data["slots"] == {"total": 16384, "owned": 16384, "unowned": 0, "migrating": []}
    assert [(g["id"], g["slots"]) for g in data["groups"]] == [("g1", 8192), ("g2", 8192)]
    g1 = data["groups"][0]
    assert [(n["address"], n["role"], n["up"]) for n in g1["nodes"]] == [
        (nodes_of["g1"][0].address, "master", True),
        (nodes_of["g1"][1].address, "replica", True),
    ]
    assert data["proxies"]["count"] == 1 and data["proxies"]["items"][0]["id"] == "p1"

    nodes_of["g2"][1].stop()
    data = json.loads(ok(zk_hosts, "status", "--json", "--node-timeout", "0.5").stdout)
    dead = data["groups"][1]["nodes"][1]
    assert dead["up"] is False and "does not answer" in dead["error"]
    assert data["healthy"] is False
    assert "DOWN" in ok(zk_hosts, "status").stdout


def test_status_reports_unowned_slots_and_wrong_roles(zk_hosts: str, zk: KazooClient, redis_factory) -> None:  # type: ignore[no-untyped-def]
    master, replica = start_node(redis_factory), start_node(redis_factory)
    ok(zk_hosts, "init", "--mode", "cache")
    store = ClusterStore(zk, "c1")
    # Written straight into ZooKeeper: a replica that does not actually replicate.
    store.set_groups(Groups((Group("g1", master.address, (replica.address,)),)), 0)
    data = json.loads(ok(zk_hosts, "status", "--json").stdout)
    assert data["slots"]["unowned"] == 16384
    assert any("16384 slots have no owner" in p for p in data["problems"])
    assert any(f"node {replica.address} is a master, expected replica" in p for p in data["problems"])
    assert "WRONG ROLE" in ok(zk_hosts, "status").stdout


def test_status_includes_the_sentinels_view_and_failovers_in_progress(zk_hosts: str, zk: KazooClient) -> None:
    ok(zk_hosts, "init", "--mode", "datastore")
    record = FailoverRecord("failover", "g1", "127.0.0.1:7001", "127.0.0.1:7002", "repoint", "s1")
    zk.create(paths.failover("c1", "g1"), record.encode())
    zk.create(paths.failover("c1", "g2"), b'{"phase": "promote"}')  # not a failover record
    data = json.loads(ok(zk_hosts, "status", "--json").stdout)
    assert data["sentinel_view"]["leader"] is None
    assert data["sentinel_view"]["failovers"]["g1"] == record.to_json()
    assert "missing field" in data["sentinel_view"]["failovers"]["g2"]["error"]
    assert "failover of group g1 in progress" in data["problems"]
    assert "failover of group g2 in progress" in data["problems"]
    assert "(leader: none)" in ok(zk_hosts, "status").stdout


def test_proxies_lists_the_registered_proxies(zk_hosts: str, zk: KazooClient) -> None:
    ok(zk_hosts, "init", "--mode", "cache")
    assert "no proxy registered" in ok(zk_hosts, "proxies").stdout
    assert json.loads(ok(zk_hosts, "proxies", "--json").stdout) == []
    store = ClusterStore(zk, "c1")
    store.register_proxy("p1", registration(pid=4242, slots_version=3, groups_version=2))
    zk.create(paths.proxy("c1", "p2"), b'{"address": "127.0.0.1:7001"}', ephemeral=True)  # not a registration
    rows = json.loads(ok(zk_hosts, "proxies", "--json").stdout)
    assert rows[0] == {"id": "p1", **registration(pid=4242, slots_version=3, groups_version=2).to_json()}
    assert rows[1]["id"] == "p2" and "missing field 'pid'" in rows[1]["error"]
    text = ok(zk_hosts, "proxies").stdout
    assert "p1" in text and "127.0.0.1:7000" in text and "4242" in text
    assert "p2" in text and "missing field 'pid'" in text


# --- the real console script -------------------------------------------------------------------------


def test_the_console_script_runs_end_to_end(zk_hosts: str, redis_factory) -> None:  # type: ignore[no-untyped-def]
    node = start_node(redis_factory)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(CONSOLE_SCRIPT), "--zk", zk_hosts, "--cluster", "c1", *args],
                              capture_output=True, text=True, timeout=30)

    assert run("init", "--mode", "cache").returncode == 0
    assert run("group", "add", "--master", node.address).returncode == 0
    assert run("rebalance").returncode == 0
    status = run("status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["groups"][0]["slots"] == 16384
    again = run("init", "--mode", "cache")
    assert again.returncode == 4 and again.stderr == "Error: cluster 'c1' already exists\n"


def test_the_console_script_gives_up_on_an_unreachable_zookeeper_in_time() -> None:
    hosts = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = subprocess.run([str(CONSOLE_SCRIPT), "--zk", hosts, "--zk-timeout", "1", "group", "list"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 3
    assert done.stderr.splitlines() == [f"Error: cannot reach ZooKeeper at {hosts} within 1s (Connection time-out)"]
    assert time.monotonic() - started < 6
