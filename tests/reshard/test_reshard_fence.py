"""The reshard executor acts under the fence it is given: once closed it takes no further step, and a transaction
of a deposed leader commits nothing; the reshard stays resumable from its record."""

from __future__ import annotations

import pytest
from reshard_helpers import keys_in_slots, load_keys

from kvstore_cluster import paths
from kvstore_cluster.model import Migration
from kvstore_cluster.ops import rebalance, reshard
from kvstore_cluster.ops.fence import Fenced
from kvstore_cluster.store import Check, VersionConflict


class ClosableFence:
    """A fence the test closes: ``check`` raises once closed; ``zk_checks`` checks a znode the test can bump."""

    def __init__(self, lease: str):
        self.closed = False
        self.lease = lease

    def check(self) -> None:
        if self.closed:
            raise Fenced("closed by the test")

    def zk_checks(self) -> list[Check]:
        self.check()
        return [Check(self.lease, 0)]


class AtMark(reshard.Reporter):
    """Runs ``then`` once the executor reports its first step marked."""

    def __init__(self, then):  # type: ignore[no-untyped-def]
        self.then = then
        self.done = False

    def update(self, slots_done: int, keys: int) -> None:
        if not self.done:
            self.done = True
            self.then()


def _start(c) -> None:  # type: ignore[no-untyped-def]
    load_keys(c.master("g1"), keys_in_slots(0, 99, 50))
    plan = rebalance.plan_reshard(c.store, [(0, 99)], "g2")
    reshard.start(c.store, plan.moves, plan.request)


@pytest.mark.parametrize("how", ["revoked", "deposed"])
def test_a_closed_fence_stops_the_executor_after_its_step_and_the_reshard_resumes(cluster, how: str) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    lease = f"{paths.cluster_root(c.tc.name)}/test-lease"
    c.store.client.create(lease, b"")
    fence = ClosableFence(lease)

    def close() -> None:
        if how == "revoked":
            fence.closed = True  # the fence knows at once
        else:
            c.store.client.set(lease, b"another leader")  # only ZooKeeper knows: the next transaction fails

    _start(c)
    with pytest.raises(Fenced if how == "revoked" else VersionConflict):
        reshard.run(c.store, reshard.Options(timeout=5), fence, AtMark(close))
    # Stopped right after the mark: nothing moved, nothing committed, the record says where it is.
    state = c.store.read_reshard()
    assert state is not None and state.value.phase == "marked"
    assert c.store.read_slots().value.migrating == (Migration(0, 99, "g1", "g2"),)
    assert c.master("g1").dbsize() == 50 and c.master("g2").dbsize() == 0
    # Anyone allowed to act resumes it from the record.
    assert c.admin("reshard", "--resume").exit_code == 0
    assert c.master("g2").dbsize() == 50 and c.store.read_reshard() is None
    c.check_ok()
