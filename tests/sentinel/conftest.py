"""Sentinel test fixtures: sentinel subprocesses (stopped whatever happens) and a store on the test cluster."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore_cluster.store import ClusterStore, connect

sys.path.insert(0, str(Path(__file__).parent))

from sentinel_helpers import SentinelFactory  # noqa: E402


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelFactory]:
    factory = SentinelFactory(tmp_path / "sentinels")
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def store(zk_hosts: str) -> Iterator[ClusterStore]:
    """A ClusterStore on the test cluster (name "test", the make_cluster default)."""
    client = connect(zk_hosts)
    try:
        yield ClusterStore(client, "test")
    finally:
        client.stop()
        client.close()


