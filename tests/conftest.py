"""Shared fixtures: a real ZooKeeper per session (fresh chroot per test) and real redis-server processes."""

from __future__ import annotations

import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from kvstore_admin.processes import LocalProcess, start_proxy, start_redis, start_zookeeper
from kvstore_cluster.store import connect

sys.path.insert(0, str(Path(__file__).parent / "sentinel"))

from chaos.report import CHAOS_ROW, render_table  # noqa: E402
from sentinel_helpers import SentinelFactory  # noqa: E402


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProcess]:
    """One real ZooKeeper for the whole test session, stopped at the end whatever happens."""
    proc = start_zookeeper(tmp_path_factory.mktemp("zookeeper"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def zk_hosts(zookeeper: LocalProcess) -> Iterator[str]:
    """A connection string with a chroot of this test's own, so tests never see each other's data."""
    chroot = f"/t-{uuid.uuid4().hex[:12]}"
    admin = connect(zookeeper.address)
    try:
        admin.create(chroot)
        yield f"{zookeeper.address}{chroot}"
        admin.delete(chroot, recursive=True)
    finally:
        admin.stop()
        admin.close()


@pytest.fixture
def zk(zk_hosts: str) -> Iterator[KazooClient]:
    client = connect(zk_hosts)
    try:
        yield client
    finally:
        client.stop()
        client.close()


class RedisFactory:
    """Starts redis-server processes for one test and stops every one of them afterwards."""

    def __init__(self, base: Path):
        self.base = base
        self.procs: list[LocalProcess] = []

    def start(self, **kwargs) -> LocalProcess:  # type: ignore[no-untyped-def]
        proc = start_redis(self.base / f"redis-{len(self.procs)}", **kwargs)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop(timeout=5)


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[RedisFactory]:
    factory = RedisFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def redis_server(redis_factory: RedisFactory) -> LocalProcess:
    return redis_factory.start()


class ProxyFactory:
    """Starts kvstore-proxy processes (the code behind `local up`) and stops every one afterwards."""

    def __init__(self, base: Path):
        self.base = base
        self.procs: list[LocalProcess] = []

    def start(self, zk_hosts: str, cluster: str, *extra: str, workers: int = 1) -> LocalProcess:
        log = self.base / f"proxy-{len(self.procs)}.log"
        return start_proxy(zk_hosts, cluster, log, "--log-format", "json", *extra, workers=workers,
                           record=self.procs.append)

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.signal(signal.SIGCONT)  # a test may have left it stopped
            proc.stop(timeout=10)


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator[ProxyFactory]:
    factory = ProxyFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelFactory]:
    """Starts kvstore-sentinel processes (sentinel_helpers.py) and stops every one afterwards."""
    factory = SentinelFactory(tmp_path / "sentinels")
    try:
        yield factory
    finally:
        factory.stop_all()


class TestCluster:
    """A cluster written straight into ZooKeeper over real redis-server processes."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, zk_hosts: str, name: str, meta, groups, slots, nodes: dict[str, list[LocalProcess]]):  # type: ignore[no-untyped-def]
        self.zk_hosts = zk_hosts
        self.name = name
        self.meta = meta
        self.groups = groups
        self.slots = slots
        self.nodes = nodes  # group id -> [master, replicas...]


@pytest.fixture
def make_cluster(zk_hosts: str, redis_factory: RedisFactory):  # type: ignore[no-untyped-def]
    """``make_cluster(groups=3, replicas=0, mode="cache")`` -> TestCluster, slots split evenly."""
    import time

    from kvstore_admin.processes import wait_until
    from kvstore_cluster.model import Group, Groups, Meta, SlotTable, even_split
    from kvstore_cluster.store import ClusterStore

    def make(groups: int = 3, replicas: int = 0, mode: str = "cache", name: str = "test") -> TestCluster:
        nodes: dict[str, list[LocalProcess]] = {}
        group_list = []
        for i in range(1, groups + 1):
            gid = f"g{i}"
            # No diskless-sync delay: replicas should be in sync before the test starts.
            fast_sync = {"repl-diskless-sync-delay": "0"}
            master = redis_factory.start(extra=fast_sync)
            reps = [redis_factory.start(replicaof=master.address, extra=fast_sync) for _ in range(replicas)]
            nodes[gid] = [master, *reps]
            group_list.append(Group(gid, master.address, tuple(r.address for r in reps)))
        for gid, procs in nodes.items():
            if len(procs) > 1:
                import redis

                for rep in procs[1:]:
                    client = redis.Redis(port=rep.port)
                    wait_until(lambda c=client: c.info("replication")["master_link_status"] == "up",
                               15, f"replica {rep.address} of {gid} to sync")
        meta = Meta(mode=mode, created_at=time.time())
        group_model = Groups(tuple(group_list))
        slots = SlotTable(tuple(even_split(group_model.ids())))
        client = connect(zk_hosts)
        try:
            ClusterStore(client, name).create(meta, group_model, slots)
        finally:
            client.stop()
            client.close()
        return TestCluster(zk_hosts, name, meta, group_model, slots, nodes)

    return make


# The chaos suite's fault table (tests/chaos): each fault test reports its row with its result,
# so the table is whole however pytest-xdist spread the tests over its workers.
_chaos_rows: list[tuple[list[str], list[str]]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _chaos_rows.extend(value for name, value in report.user_properties if name == CHAOS_ROW)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if _chaos_rows:
        terminalreporter.write_sep("=", "chaos: fault table")
        terminalreporter.write_line(render_table(sorted(_chaos_rows)))
