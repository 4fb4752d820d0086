"""Reshard fixtures: a cluster of real redis-servers with its tables in ZooKeeper (see reshard_helpers)."""

from __future__ import annotations

import pytest
from reshard_helpers import Cluster


@pytest.fixture
def cluster(make_cluster, zk):  # type: ignore[no-untyped-def]
    """``cluster(groups=2, mode="cache")`` -> Cluster with slots split evenly."""

    def make(groups: int = 2, mode: str = "cache", replicas: int = 0) -> Cluster:
        return Cluster(make_cluster(groups=groups, mode=mode, replicas=replicas), zk)

    return make
