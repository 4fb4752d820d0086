"""SIGTERM ends a proxy or a sentinel promptly even when its ZooKeeper has gone away."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from kvstore_admin.processes import start_zookeeper, wait_until
from kvstore_cluster.model import Group, Groups, Meta, SlotTable, even_split
from kvstore_cluster.store import ClusterStore, connect


def test_sigterm_exits_within_seconds_while_zookeeper_is_dead(tmp_path: Path, redis_factory, proxy_factory) -> None:
    zookeeper = start_zookeeper(tmp_path / "zk")  # our own: this test kills it
    try:
        node = redis_factory.start()
        client = connect(zookeeper.address)
        try:
            ClusterStore(client, "c").create(Meta("cache", time.time()), Groups((Group("g1", node.address),)),
                                             SlotTable(tuple(even_split(["g1"]))))
        finally:
            client.stop()
            client.close()
        proxy = proxy_factory.start(zookeeper.address, "c")
        zookeeper.signal(signal.SIGKILL)
        wait_until(lambda: not zookeeper.alive(), 10, "ZooKeeper to die")

        started = time.monotonic()
        proxy.signal(signal.SIGTERM)
        wait_until(lambda: not proxy.alive(), 10, "the proxy to exit after SIGTERM")
        assert time.monotonic() - started < 8
    finally:
        zookeeper.stop()


def test_sentinel_sigterm_exits_within_seconds_while_zookeeper_is_dead(tmp_path: Path, redis_factory) -> None:
    from kvstore_admin.processes import sentinel_argv, spawn

    zookeeper = start_zookeeper(tmp_path / "zk")
    sentinel = None
    try:
        node = redis_factory.start()
        client = connect(zookeeper.address)
        try:
            store = ClusterStore(client, "c")
            store.create(Meta("cache", time.time()), Groups((Group("g1", node.address),)),
                         SlotTable(tuple(even_split(["g1"]))))
            sentinel = spawn("sentinel", sentinel_argv(zookeeper.address, "c"), 0, tmp_path / "sentinel.log")
            # As leader it holds an election node, whose removal on shutdown must not hang.
            wait_until(lambda: any(v.leader for v in store.sentinel_views().items.values()), 20,
                       "the sentinel to register as leader")
        finally:
            client.stop()
            client.close()
        zookeeper.signal(signal.SIGKILL)
        wait_until(lambda: not zookeeper.alive(), 10, "ZooKeeper to die")

        started = time.monotonic()
        sentinel.signal(signal.SIGTERM)
        wait_until(lambda: not sentinel.alive(), 15, "the sentinel to exit after SIGTERM")
        assert time.monotonic() - started < 8
    finally:
        if sentinel is not None:
            sentinel.stop()
        zookeeper.stop()
