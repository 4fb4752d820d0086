"""ClusterStore against a real ZooKeeper: versions, clear errors, and races lost cleanly."""

from __future__ import annotations

import threading
import time

import pytest
from kazoo.client import KazooClient

from kvstore_admin.processes import free_port
from kvstore_cluster import paths
from kvstore_cluster.failover_record import FailoverRecord
from kvstore_cluster.leader_election import NODE_NAME
from kvstore_cluster.model import Group, Groups, Meta, Migration, SlotTable, even_split
from kvstore_cluster.proxy_registration import ProxyRegistration
from kvstore_cluster.reshard_state import ReshardState
from kvstore_cluster.sentinel_view import ProbeResult, SentinelView
from kvstore_cluster.store import (
    Check,
    ClusterExists,
    ClusterNotFound,
    ClusterStore,
    CorruptData,
    Create,
    Delete,
    Records,
    Set,
    StoreError,
    VersionConflict,
    Versioned,
    ZooKeeperUnavailable,
    connect,
)

G1 = Group("g1", "127.0.0.1:7001", ("127.0.0.1:7101",))
G2 = Group("g2", "127.0.0.1:7002")


def _create(store: ClusterStore, mode: str = "cache") -> None:
    groups = Groups((G1, G2))
    store.create(Meta(mode, 1.5), groups, SlotTable(tuple(even_split(groups.ids()))))


def test_create_then_read_returns_the_values_and_versions(zk: KazooClient) -> None:
    store = ClusterStore(zk, "c1")
    assert not store.exists()
    _create(store, "datastore")
    assert store.exists()
    meta, groups, slots = store.read_meta(), store.read_groups(), store.read_slots()
    assert (meta.value.mode, meta.value.created_at, meta.version) == ("datastore", 1.5, 0)
    assert groups.value.ids() == ["g1", "g2"] and groups.version == 0
    assert slots.value.counts() == {"g1": 8192, "g2": 8192}
    for container in paths.containers("c1"):
        assert zk.exists(container) is not None


def test_create_twice_raises_cluster_exists_and_keeps_the_first(zk: KazooClient) -> None:
    store = ClusterStore(zk, "c1")
    _create(store, "cache")
    with pytest.raises(ClusterExists, match="cluster 'c1' already exists"):
        store.create(Meta("datastore", 2.0), Groups(), SlotTable())
    assert store.read_meta().value.mode == "cache"


def test_reading_a_missing_cluster_raises_cluster_not_found(zk: KazooClient) -> None:
    store = ClusterStore(zk, "nothing-here")
    for read in (store.read_meta, store.read_groups, store.read_slots):
        with pytest.raises(ClusterNotFound, match="cluster 'nothing-here' does not exist"):
            read()


def test_committing_to_a_missing_cluster_raises_cluster_not_found(zk: KazooClient) -> None:
    store = ClusterStore(zk, "nothing-here")
    with pytest.raises(ClusterNotFound):
        store.set_groups(Groups(), 0)


@pytest.mark.parametrize(
    ("znode", "data", "message"),
    [
        ("meta", b"garbage", "not valid JSON"),
        ("groups", b'{"groups": [{"id": "g1"}]}', "missing field"),
        ("slots", b'{"ranges": [[0, 99, "g1"], [50, 60, "g2"]], "migrating": []}', "overlaps"),
        ("groups", b'{"format": 7, "groups": []}', "unsupported format version 7"),
    ],
)
def test_corrupt_znode_data_raises_corrupt_data_naming_the_znode(
    zk: KazooClient, znode: str, data: bytes, message: str
) -> None:
    store = ClusterStore(zk, "c1")
    _create(store)
    path = f"{paths.cluster_root('c1')}/{znode}"
    zk.set(path, data)
    read = {"meta": store.read_meta, "groups": store.read_groups, "slots": store.read_slots}[znode]
    with pytest.raises(CorruptData) as info:
        read()
    assert path in str(info.value) and message in str(info.value)


def test_a_stale_version_raises_version_conflict_and_writes_nothing(zk: KazooClient) -> None:
    store = ClusterStore(zk, "c1")
    _create(store)
    groups = store.read_groups()
    store.set_groups(groups.value.without("g2"), groups.version)
    with pytest.raises(VersionConflict, match="nothing was written"):
        store.set_groups(groups.value.without("g1"), groups.version)
    assert store.read_groups().value.ids() == ["g1"]


def test_a_failed_check_rolls_back_every_operation_of_the_transaction(zk: KazooClient) -> None:
    store = ClusterStore(zk, "c1")
    _create(store)
    groups, slots = store.read_groups(), store.read_slots()
    store.set_slots(slots.value.assign([(0, 10)], "g2"), slots.version)  # slots moves on
    with pytest.raises(VersionConflict):
        store.commit([
            Set(paths.groups("c1"), groups.value.without("g2").encode(), groups.version),
            Create(f"{paths.cluster_root('c1')}/extra"),
            Check(paths.slots("c1"), slots.version),
        ])
    assert store.read_groups().version == groups.version
    assert zk.exists(f"{paths.cluster_root('c1')}/extra") is None


def test_other_commit_failures_name_the_path(zk: KazooClient) -> None:
    store = ClusterStore(zk, "c1")
    _create(store)
    with pytest.raises(StoreError, match="already exists; nothing was written"):
        store.commit([Create(paths.meta("c1"), b"")])
    with pytest.raises(StoreError, match="does not exist; nothing was written"):
        store.commit([Delete(f"{paths.cluster_root('c1')}/missing")])


def test_two_concurrent_writers_exactly_one_wins(zk_hosts: str) -> None:
    """Both read the same version, then commit at once: one commits, the other gets VersionConflict."""
    setup = connect(zk_hosts)
    try:
        _create(ClusterStore(setup, "c1"))
    finally:
        setup.stop()
        setup.close()
    clients = [connect(zk_hosts) for _ in range(2)]
    stores = [ClusterStore(c, "c1") for c in clients]
    reads = [s.read_slots() for s in stores]
    assert reads[0].version == reads[1].version
    barrier = threading.Barrier(2)
    outcomes: list[object] = [None, None]

    def write(i: int) -> None:
        table = reads[i].value.assign([(0, 100)], f"g{i + 1}")
        barrier.wait()
        try:
            stores[i].set_slots(table, reads[i].version)
            outcomes[i] = "won"
        except VersionConflict as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert sorted(type(o).__name__ for o in outcomes) == ["VersionConflict", "str"]
        winner = outcomes.index("won")
        final = stores[0].read_slots()
        assert final.version == reads[0].version + 1
        assert final.value.owner(0) == f"g{winner + 1}"  # only the winner's table was written
    finally:
        for c in clients:
            c.stop()
            c.close()


def test_connect_to_nothing_raises_zookeeper_unavailable_within_the_timeout() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ZooKeeperUnavailable, match=f"127.0.0.1:{port} within 1s"):
        connect(f"127.0.0.1:{port}", timeout=1.0)
    assert time.monotonic() - started < 5


def test_proxies_lists_registrations_and_reports_malformed_ones(zk: KazooClient) -> None:
    store = ClusterStore(zk, "c1")
    _create(store)
    reg = ProxyRegistration("127.0.0.1:7000", 42, 1.0, slots_version=3, groups_version=2, fenced=False)
    store.register_proxy("p1", reg)
    store.register_proxy("p1", reg)  # registering again replaces
    zk.create(paths.proxy("c1", "p2"), b"not json", ephemeral=True)
    found = store.proxies()
    assert found.items == {"p1": reg}
    assert list(found.malformed) == ["p2"] and "not valid JSON" in found.malformed["p2"]
    assert store.sentinel_views() == Records()


def test_reshard_and_failover_records_are_read_with_versions_or_none(zk: KazooClient) -> None:
    store = ClusterStore(zk, "c1")
    _create(store)
    assert store.read_reshard() is None
    assert store.read_failover("g1") is None and store.failing_over() == []
    state = ReshardState({"command": "rebalance", "drain": None}, ((Migration(0, 9, "g1", "g2"),),))
    zk.create(paths.reshard("c1"), state.encode())
    assert store.read_reshard() == Versioned(state, 0)
    record = FailoverRecord("failover", "g1", G1.master, G1.replicas[0], "promote", "s1", started_at=5.0)
    zk.create(paths.failover("c1", "g1"), record.encode())
    zk.create(paths.failover("c1", "g2"), b'{"kind": "failover"}')
    assert store.read_failover("g1") == Versioned(record, 0)
    assert store.failing_over() == ["g1", "g2"]
    failovers = store.failovers()
    assert failovers.items == {"g1": record} and "missing field" in failovers.malformed["g2"]
    with pytest.raises(CorruptData, match=r"failover/g2 holds malformed data: failover record: missing field"):
        store.read_failover("g2")
    zk.set(paths.reshard("c1"), b'{"steps": []}')
    with pytest.raises(CorruptData, match="reshard holds malformed data"):
        store.read_reshard()


def test_a_missing_cluster_is_an_error_not_a_missing_record(zk: KazooClient) -> None:
    store = ClusterStore(zk, "nope")
    with pytest.raises(ClusterNotFound):
        store.read_reshard()
    with pytest.raises(ClusterNotFound):
        store.read_failover("g1")


def test_views_and_the_leader_are_read_back(zk: KazooClient) -> None:
    store = ClusterStore(zk, "c1")
    _create(store)
    assert store.sentinel_leader() is None
    view = SentinelView("s1", 10.0, True, {"127.0.0.1:7001": 9.0},
                        {"127.0.0.1:7001": ProbeResult("127.0.0.1:7001", False, 9.5, error="down")})
    store.publish_view(view)
    assert store.sentinel_views().items == {"s1": view}
    leader = paths.sentinel_leader("c1")
    zk.create(f"{leader}/abc{NODE_NAME}", b"s2", ephemeral=True, sequence=True)
    zk.create(f"{leader}/def{NODE_NAME}", b"s1", ephemeral=True, sequence=True)
    zk.create(f"{leader}/stray", b"s3")  # not a contender
    assert store.sentinel_leader() == "s2"
