"""Security fixtures: a cluster secured with ZooKeeper ACLs, shared by a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvstore_admin.processes import LocalProcess

from .security_helpers import SecuredCluster


@pytest.fixture(scope="module")
def secured_cluster(zookeeper: LocalProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredCluster]:
    cluster = SecuredCluster(zookeeper, tmp_path_factory.mktemp("secured"))
    try:
        yield cluster
    finally:
        cluster.close()
