"""Sentinel test fixtures: a store on the test cluster (the sentinel processes are tests/conftest.py's)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore_cluster.store import ClusterStore, connect

sys.path.insert(0, str(Path(__file__).parent))  # the tests import sentinel_helpers



@pytest.fixture
def store(zk_hosts: str) -> Iterator[ClusterStore]:
    """A ClusterStore on the test cluster (name "test", the make_cluster default)."""
    client = connect(zk_hosts)
    try:
        yield ClusterStore(client, "test")
    finally:
        client.stop()
        client.close()


