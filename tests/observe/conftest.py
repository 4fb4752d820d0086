"""Observability fixtures: sentinel processes and a cuttable relay in front of ZooKeeper."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "sentinel"))

from observe_helpers import ZkRelay  # noqa: E402
from sentinel_helpers import SentinelFactory  # noqa: E402

from kvstore_admin.processes import LocalProcess  # noqa: E402


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelFactory]:
    factory = SentinelFactory(tmp_path / "sentinels")
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def zk_relay(zookeeper: LocalProcess, zk_hosts: str) -> Iterator[ZkRelay]:
    """A cuttable TCP relay in front of the test's ZooKeeper: ``relay.hosts`` has the test's chroot."""
    relay = ZkRelay(zookeeper, zk_hosts)
    try:
        yield relay
    finally:
        relay.close()
