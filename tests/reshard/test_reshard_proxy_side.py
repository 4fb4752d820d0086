"""The proxy side of a migration: held until every proxy has the mark, then MIGRATE on A, run on B."""

from __future__ import annotations

import json

import pytest
import redis
from reshard_helpers import keys_in_slots
from test_reshard_through_proxies import Proxy

from kvstore_admin.processes import wait_until
from kvstore_cluster import paths
from kvstore_cluster.model import Migration
from kvstore_cluster.reshard_state import ReshardState


def reshard_node(phase: str, moves: list[Migration], version: int = 1) -> bytes:
    return ReshardState(request={"command": "test"}, steps=(tuple(moves),), phase=phase, version=version).encode()


@pytest.mark.parametrize(("phase", "step", "expected"), [
    ("marked", [Migration(0, 99, "g1", "g2")], False),
    ("pending", [Migration(0, 99, "g1", "g2")], False),
    ("moving", [Migration(0, 99, "g1", "g2")], True),
    ("committed", [Migration(0, 99, "g1", "g2")], True),
    # The znode still describes the previous step while the table already has the next marks.
    ("committed", [Migration(100, 199, "g1", "g2")], False),
    ("moving", [Migration(0, 99, "g2", "g1")], False),
])
def test_marked_slots_are_released_only_for_the_migrations_the_reshard_znode_names(
        phase: str, step: list[Migration], expected: bool) -> None:
    from kvstore_proxy.migrating import released

    assert released(reshard_node(phase, step), (Migration(0, 99, "g1", "g2"),)) is expected
    assert released(None, (Migration(0, 99, "g1", "g2"),)) is True  # marks nobody coordinates
    assert released(b"{garbage", (Migration(0, 99, "g1", "g2"),)) is False
    assert released(reshard_node("marked", step), ()) is True  # nothing migrating: nothing held


def test_commands_on_a_migrating_slot_move_their_keys_first(cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    a, b = c.master("g1"), c.master("g2")
    k1, k2, k3, k4, k5 = keys_in_slots(0, 99, 5)
    for k in (k1, k2, k3, k4):
        a.set(k, b"old", ex=500)
    proxy = Proxy(c.zk_hosts, c.tc.name, tmp_path / "proxy.log")
    try:
        client = proxy.client()
        store = c.store
        # Mark 0-99 migrating g1 -> g2 with the reshard znode still saying "marked": held.
        moves = [Migration(0, 99, "g1", "g2")]
        store.client.create(paths.reshard(c.tc.name), reshard_node("marked", moves))
        slots = store.read_slots()
        store.set_slots(slots.value.with_migrating((Migration(0, 99, "g1", "g2"),)), slots.version)
        wait_until(lambda: _held(client, k1), 10, "the proxy to hold the marked slots")
        assert a.exists(k1) and not b.exists(k1)
        # Every proxy acked: the slots are released.
        store.client.set(paths.reshard(c.tc.name), reshard_node("moving", moves))
        wait_until(lambda: not _held(client, k1), 10, "the proxy to release the slots")
        assert client.get(k1) == b"old"
        assert not a.exists(k1) and b.get(k1) == b"old" and 400 < b.ttl(k1) <= 500
        assert client.mget([k2, k2, k3]) == [b"old", b"old", b"old"]  # a key twice moves once
        assert not a.exists(k2) and not a.exists(k3)
        client.set(k4, b"new")
        assert not a.exists(k4) and b.get(k4) == b"new"
        # Pipelined commands on keys of the slots keep their order, moved or not.
        counter = keys_in_slots(0, 99, 1, "ctr")[0]
        a.set(counter, 1000)
        pipe = client.pipeline(transaction=False)
        for _ in range(200):
            pipe.incr(counter)
            pipe.append(k2, b"+")
        replies = pipe.execute()
        assert replies[0::2] == list(range(1001, 1201))
        assert replies[1::2] == list(range(4, 204))
        assert not a.exists(counter) and b.get(counter) == b"1200"
        # RESP3 clients go through the same handler, to the target's RESP3 connection.
        r3 = redis.Redis(port=proxy.port, socket_timeout=20, protocol=3)
        hk = keys_in_slots(0, 99, 1, "hash")[0]
        a.hset(hk, mapping={"f": "v"})
        assert r3.hgetall(hk) == {b"f": b"v"}
        assert not a.exists(hk) and b.hgetall(hk) == {b"f": b"v"}
        r3.close()
        # A key on both sides (planted) is never overwritten: the client gets the error.
        a.set(k5, b"source")
        b.set(k5, b"planted")
        with pytest.raises(redis.ResponseError, match="BUSYKEY"):
            client.get(k5)
        assert a.get(k5) == b"source" and b.get(k5) == b"planted"
    finally:
        proxy.stop()


def _held(client: redis.Redis, key: bytes) -> bool:
    try:
        client.exists(key)
        return False
    except redis.exceptions.TryAgainError:
        return True


def test_reshard_znode_format_is_what_the_proxy_reads() -> None:
    """The fields the proxy relies on (phase, steps, step) stay in the admin's state encoding."""
    node = json.loads(reshard_node("moving", [Migration(0, 9, "g1", "g2")]))
    assert node["phase"] == "moving" and node["steps"][node["step"]] == [[0, 9, "g1", "g2"]]
