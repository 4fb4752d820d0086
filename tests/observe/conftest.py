"""Observability fixtures: a cuttable relay in front of ZooKeeper (sentinels: tests/conftest.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from observe_helpers import ZkRelay  # noqa: E402

from kvstore_admin.processes import LocalProcess  # noqa: E402


@pytest.fixture
def zk_relay(zookeeper: LocalProcess, zk_hosts: str) -> Iterator[ZkRelay]:
    """A cuttable TCP relay in front of the test's ZooKeeper: ``relay.hosts`` has the test's chroot."""
    relay = ZkRelay(zookeeper, zk_hosts)
    try:
        yield relay
    finally:
        relay.close()
