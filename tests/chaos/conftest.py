"""Chaos fixtures: the suite's own ZooKeeper (faults pause it), clusters stopped whatever happens, the table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chaos.cluster import ChaosCluster
from chaos.report import CHAOS_ROW, ROWS
from kvstore_admin.processes import LocalProcess, start_zookeeper


@pytest.fixture(scope="session")
def chaos_zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProcess]:
    """Not the shared session ZooKeeper: the ZooKeeper-pause fault SIGSTOPs this one."""
    proc = start_zookeeper(tmp_path_factory.mktemp("chaos-zookeeper"))
    try:
        yield proc
    finally:
        proc.signal(18)  # SIGCONT, in case a failed test left it paused
        proc.stop()


@pytest.fixture
def chaos_cluster(chaos_zookeeper: LocalProcess, tmp_path: Path) -> Iterator[Callable[..., ChaosCluster]]:
    """``chaos_cluster(mode=..., groups=..., replicas=..., linked=(...))`` -> a started ChaosCluster."""
    made: list[ChaosCluster] = []

    def make(**kwargs) -> ChaosCluster:  # type: ignore[no-untyped-def]
        cluster = ChaosCluster(chaos_zookeeper, tmp_path / f"cluster-{len(made)}", **kwargs)
        made.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()


@pytest.fixture(autouse=True)
def report_table_rows(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each fault's row goes with its test's report, so the session's table (tests/conftest.py) has
    every row, whichever process (pytest-xdist worker) ran the test."""
    before = len(ROWS)
    yield
    for row in ROWS[before:]:
        request.node.user_properties.append((CHAOS_ROW, row.rendered()))
