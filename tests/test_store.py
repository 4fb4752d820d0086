"""ClusterStore against a real ZooKeeper: versions, clear errors, and races lost cleanly."""

from __future__ import annotations

import threading
import time

import pytest
from kazoo.client import KazooClient

from kvstore_admin.processes import free_port
from kvstore_cluster import paths
from kvstore_cluster.model import Group, Groups, Meta, SlotTable, even_split
from kvstore_cluster.store import (
    Check,
    ClusterExists,
    ClusterNotFound,
    ClusterStore,
    CorruptData,
    Create,
    Delete,
    Set,
    StoreError,
    VersionConflict,
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


def test_proxies_lists_registrations_and_skips_malformed_ones(zk: KazooClient) -> None:
    store = ClusterStore(zk, "c1")
    _create(store)
    store.register(paths.proxy("c1", "p1"), {"address": "127.0.0.1:7000", "pid": 42})
    zk.create(paths.proxy("c1", "p2"), b"not json", ephemeral=True)
    assert store.proxies() == {"p1": {"address": "127.0.0.1:7000", "pid": 42}, "p2": {"error": "malformed JSON"}}
    assert store.sentinels() == {}
