"""Import fixtures: a 3-group cluster of real redis-servers (tables in ZooKeeper) and a source redis-server."""

from __future__ import annotations

import pytest
from import_helpers import FAST_SOURCE


@pytest.fixture
def cluster(make_cluster):  # type: ignore[no-untyped-def]
    return make_cluster(groups=3, mode="datastore", name="imp")


@pytest.fixture
def source(redis_factory):  # type: ignore[no-untyped-def]
    return redis_factory.start(extra=FAST_SOURCE)
