"""Proxy fixtures: a 3-group cluster with a kvstore-proxy subprocess, shared per module where tests allow."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from kvstore_admin.processes import LocalProcess, start_proxy, start_redis
from kvstore_cluster.model import Group, Groups, Meta, SlotTable, even_split
from kvstore_cluster.store import ClusterStore, connect


class ProxyProcess:
    """A kvstore-proxy from ``start_proxy`` (waits for PING); always stopped by the fixture that made it."""

    def __init__(self, zk_hosts: str, cluster: str, log: Path, *extra: str, workers: int = 1,
                 password: str | None = None):
        self.log = log
        self.password = password
        self.proc = start_proxy(zk_hosts, cluster, log, "--log-level", "info", *extra, workers=workers,
                                timeout=20.0)
        self.port = self.proc.port

    def client(self, **kwargs) -> redis.Redis:  # type: ignore[no-untyped-def]
        kwargs.setdefault("socket_timeout", 20)
        # RESP2 unless asked (redis-benchmark's and most drivers' protocol); redis-py 8's default,
        # RESP3, is what test_resp3.py and the protocol=3 model test use.
        kwargs.setdefault("protocol", 2)
        if self.password:
            kwargs.setdefault("password", self.password)
        return redis.Redis(port=self.port, **kwargs)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM to the proxy, then its exit code (SIGKILL to its process group after ``timeout``)."""
        if self.proc.returncode is None:
            self.proc.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.stop(timeout=0)
        return self.proc.returncode


class ProxyCluster:
    """Groups of real redis-servers, their tables in ZooKeeper, and a proxy in front."""

    def __init__(self, zk_hosts: str, name: str, nodes: dict[str, LocalProcess], base: Path):
        self.zk_hosts = zk_hosts
        self.name = name
        self.nodes = nodes
        self.base = base
        self.proxy: ProxyProcess | None = None
        self.extra_procs: list[LocalProcess] = []

    def zk(self):  # type: ignore[no-untyped-def]
        return connect(self.zk_hosts)

    def direct(self, gid: str) -> redis.Redis:
        return redis.Redis(port=self.nodes[gid].port, socket_timeout=10)

    def flush_all(self) -> None:
        for node in self.nodes.values():
            redis.Redis(port=node.port).flushall()

    def start_proxy(self, *extra: str, workers: int = 1, password: str | None = None) -> ProxyProcess:
        self.proxy = ProxyProcess(self.zk_hosts, self.name, self.base / f"proxy-{time.monotonic_ns()}.log",
                                  *extra, workers=workers, password=password)
        return self.proxy

    def start_redis(self) -> LocalProcess:
        proc = start_redis(self.base / f"extra-{len(self.extra_procs)}")
        self.extra_procs.append(proc)
        return proc


def _make_cluster(zookeeper: LocalProcess, base: Path, groups: int, replicas: int = 0,
                  mode: str = "cache") -> tuple[ProxyCluster, Callable[[], None]]:
    chroot = f"/p-{uuid.uuid4().hex[:12]}"
    admin = connect(zookeeper.address)
    admin.create(chroot)
    zk_hosts = f"{zookeeper.address}{chroot}"
    nodes = {f"g{i}": start_redis(base / f"redis-g{i}") for i in range(1, groups + 1)}
    fast_sync = {"repl-diskless-sync-delay": "0"}
    copies = {gid: [start_redis(base / f"redis-{gid}-r{j}", replicaof=m.address, extra=fast_sync)
                    for j in range(1, replicas + 1)] for gid, m in nodes.items()}
    model = Groups(tuple(Group(gid, p.address, tuple(r.address for r in copies[gid])) for gid, p in nodes.items()))
    client = connect(zk_hosts)
    try:
        ClusterStore(client, "test").create(Meta(mode, time.time()), model,
                                           SlotTable(tuple(even_split(model.ids()))))
    finally:
        client.stop()
        client.close()
    cluster = ProxyCluster(zk_hosts, "test", nodes, base)
    cluster.extra_procs.extend(r for reps in copies.values() for r in reps)

    def cleanup() -> None:
        if cluster.proxy is not None:
            cluster.proxy.stop()
        for p in [*nodes.values(), *cluster.extra_procs]:
            p.stop(timeout=5)
        try:
            admin.delete(chroot, recursive=True)
        finally:
            admin.stop()
            admin.close()

    return cluster, cleanup


@pytest.fixture(scope="module")
def shared_cluster(zookeeper: LocalProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyCluster]:
    """One 3-group cluster and proxy for a whole module (its own ZooKeeper chroot)."""
    base = tmp_path_factory.mktemp("proxy-cluster")
    cluster, cleanup = _make_cluster(zookeeper, base, 3)
    try:
        cluster.proxy = ProxyProcess(cluster.zk_hosts, cluster.name, base / "proxy.log")
        yield cluster
    finally:
        cleanup()


@pytest.fixture
def proxy_cluster(zookeeper: LocalProcess, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``proxy_cluster(groups=3, *proxy_flags, workers=1, password=None)`` -> ProxyCluster of this test."""
    made: list[Callable[[], None]] = []

    def make(groups: int = 3, *extra: str, workers: int = 1, password: str | None = None,
             start: bool = True) -> ProxyCluster:
        cluster, cleanup = _make_cluster(zookeeper, tmp_path, groups)
        made.append(cleanup)
        if start:
            cluster.start_proxy(*extra, workers=workers, password=password)
        return cluster

    try:
        yield make
    finally:
        for cleanup in made:
            cleanup()


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProcess]:
    """One plain redis-server: what the whole cluster behind the proxy must look like."""
    proc = start_redis(tmp_path_factory.mktemp("model"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def pc(shared_cluster: ProxyCluster) -> Iterator[redis.Redis]:
    """A client of the module's proxy, on an empty keyspace."""
    shared_cluster.flush_all()
    assert shared_cluster.proxy is not None
    client = shared_cluster.proxy.client()
    try:
        yield client
    finally:
        client.close()
