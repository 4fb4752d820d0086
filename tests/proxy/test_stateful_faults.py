"""Transactions, blocked clients and subscribers while their slot is resharded or their group's master switched.

One datastore cluster (3 groups, a replica each) and one proxy for the module; each test picks
keys in a slot it moves itself, so the tests do not depend on each other's moves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
from click.testing import CliRunner

from kvstore_admin.cli import cli
from kvstore_admin.processes import LocalProcess, wait_until
from kvstore_cluster.slots import key_slot
from kvstore_cluster.store import ClusterStore

from .conftest import ProxyCluster, ProxyProcess, _make_cluster
from .stateful_helpers import blocked_clients, wait_blocked

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def ds(zookeeper: LocalProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyCluster]:
    base = tmp_path_factory.mktemp("stateful-faults")
    cluster, cleanup = _make_cluster(zookeeper, base, 3, replicas=1, mode="datastore")
    try:
        for rep in cluster.extra_procs:
            wait_until(lambda r=rep: redis.Redis(port=r.port).info("replication")["master_link_status"] == "up",
                       20, f"replica {rep.address} to sync")
        cluster.proxy = ProxyProcess(cluster.zk_hosts, cluster.name, base / "proxy.log")
        yield cluster
    finally:
        cleanup()


def admin(cluster: ProxyCluster, *args: str) -> None:
    result = CliRunner().invoke(cli, ["--zk", cluster.zk_hosts, "--cluster", cluster.name, *args],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output


def store(cluster: ProxyCluster) -> ClusterStore:
    return ClusterStore(cluster.zk(), cluster.name)


def master_of(cluster: ProxyCluster, gid: str) -> redis.Redis:
    s = store(cluster)
    try:
        host, _, port = s.read_groups().value.get(gid).master.rpartition(":")  # type: ignore[union-attr]
    finally:
        s.client.stop()
        s.client.close()
    return redis.Redis(host=host, port=int(port), socket_timeout=10)


def key_owned_by(cluster: ProxyCluster, gid: str, prefix: str) -> bytes:
    """A fresh key (its own hash tag) whose slot ``gid`` owns now."""
    s = store(cluster)
    try:
        owners = s.read_slots().value.owners()
    finally:
        s.client.stop()
        s.client.close()
    i = 0
    while True:
        k = f"{{{prefix}{i}}}k".encode()
        if owners[key_slot(k)] == gid:
            return k
        i += 1


def reshard(cluster: ProxyCluster, key: bytes, to: str) -> None:
    admin(cluster, "reshard", "--slots", str(key_slot(key)), "--to", to)


def blpop_in_thread(client: redis.Redis, key: bytes, timeout: float) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        t0 = time.monotonic()
        try:
            out.append(client.blpop([key], timeout))
        except redis.RedisError as exc:
            out.append(exc)
        out.append(time.monotonic() - t0)

    t = threading.Thread(target=run)
    t.start()
    return t, out


# --- blocked clients ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_blocked_client_follows_a_reshard_of_its_key(ds: ProxyCluster, protocol: int) -> None:
    k = key_owned_by(ds, "g1", f"rb{protocol}-")
    g1, g2 = master_of(ds, "g1"), master_of(ds, "g2")
    client = ds.proxy.client(protocol=protocol)  # type: ignore[union-attr]
    t, out = blpop_in_thread(client, k, 0)
    wait_blocked(g1, 1)
    reshard(ds, k, "g2")
    wait_blocked(g2, 1)  # blocked again on the new owner
    assert blocked_clients(g1) == 0
    ds.proxy.client().rpush(k, "moved")  # type: ignore[union-attr]
    t.join(10)
    assert list(out[0]) == [k, b"moved"]  # type: ignore[arg-type]
    assert not g1.exists(k) and not g2.exists(k)


def test_a_blocked_client_keeps_the_time_it_had_left_across_a_reshard(ds: ProxyCluster) -> None:
    k = key_owned_by(ds, "g2", "rt-")
    g2, g3 = master_of(ds, "g2"), master_of(ds, "g3")
    t, out = blpop_in_thread(ds.proxy.client(), k, 4)  # type: ignore[union-attr]
    wait_blocked(g2, 1)
    reshard(ds, k, "g3")
    wait_blocked(g3, 1)
    t.join(10)
    assert out[0] is None and 3.9 < out[1] < 5.0  # type: ignore[operator]


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_blocked_client_follows_a_switchover_of_its_group(ds: ProxyCluster, protocol: int) -> None:
    k = key_owned_by(ds, "g3", f"sw{protocol}-")
    old = master_of(ds, "g3")
    t, out = blpop_in_thread(ds.proxy.client(protocol=protocol), k, 0)  # type: ignore[union-attr]
    wait_blocked(old, 1)
    admin(ds, "failover", "g3")
    new = master_of(ds, "g3")
    assert new.connection_pool.connection_kwargs["port"] != old.connection_pool.connection_kwargs["port"]
    wait_blocked(new, 1)
    ds.proxy.client().rpush(k, "after")  # type: ignore[union-attr]
    t.join(10)
    assert list(out[0]) == [k, b"after"]  # type: ignore[arg-type]


# --- transactions -------------------------------------------------------------------------------


def test_a_watch_broken_by_a_reshard_makes_exec_nil_and_nothing_runs_anywhere(ds: ProxyCluster) -> None:
    k = key_owned_by(ds, "g1", "tw-")
    g1, g2 = master_of(ds, "g1"), master_of(ds, "g2")
    c = ds.proxy.client()  # type: ignore[union-attr]
    c.set(k, "0")
    with c.pipeline() as pipe:
        pipe.watch(k)
        value = int(pipe.get(k))
        reshard(ds, k, "g2")
        pipe.multi()
        pipe.set(k, value + 1)
        pipe.set(k + b":marker", "ran")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert not g1.exists(k + b":marker") and not g2.exists(k + b":marker")
    assert g2.get(k) == b"0" and not g1.exists(k)

    def incr(p: redis.client.Pipeline) -> None:
        v = int(p.get(k))
        p.multi()
        p.set(k, v + 1)

    c.transaction(incr, k)  # a retry runs on the new owner
    assert g2.get(k) == b"1"


def test_a_transaction_queued_across_a_reshard_runs_on_the_new_owner_only(ds: ProxyCluster) -> None:
    k = key_owned_by(ds, "g2", "tq-")
    g2, g3 = master_of(ds, "g2"), master_of(ds, "g3")
    c = ds.proxy.client()  # type: ignore[union-attr]
    c.set(k, "10")
    conn = c.connection_pool.get_connection()
    try:
        conn.send_command("MULTI")
        assert conn.read_response() == b"OK"
        conn.send_command("INCR", k)
        assert conn.read_response() == b"QUEUED"
        reshard(ds, k, "g3")
        execs = int(g2.info("commandstats").get("cmdstat_exec", {}).get("calls", 0))
        conn.send_command("EXEC")
        assert conn.read_response() == [11]
    finally:
        c.connection_pool.release(conn)
    assert g3.get(k) == b"11" and not g2.exists(k)
    assert int(g2.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)) == execs


def test_a_switchover_between_watch_and_exec_never_runs_it_on_the_old_master(ds: ProxyCluster) -> None:
    k = key_owned_by(ds, "g1", "ts-")
    old = master_of(ds, "g1")
    c = ds.proxy.client()  # type: ignore[union-attr]
    c.set(k, "0")
    execs = int(old.info("commandstats").get("cmdstat_exec", {}).get("calls", 0))
    with c.pipeline() as pipe:
        pipe.watch(k)
        pipe.get(k)
        admin(ds, "failover", "g1")
        pipe.multi()
        pipe.incr(k)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert int(old.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)) == execs
    assert c.get(k) == b"0"
    assert c.pipeline(transaction=True).incr(k).execute() == [1]  # and the new master serves the next one


# --- subscribers --------------------------------------------------------------------------------


def _one_message(ps: redis.client.PubSub, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = ps.get_message(timeout=0.2)
        if m is not None and m["type"] in ("message", "pmessage"):
            return m
    raise AssertionError("no message")


@pytest.mark.parametrize("move", ["reshard", "switchover"])
def test_subscriptions_follow_their_channel_across_a_reshard_and_a_switchover(ds: ProxyCluster, move: str) -> None:
    ch = key_owned_by(ds, "g2", f"ps-{move}-")
    ps = ds.proxy.client(protocol=3).pubsub()  # type: ignore[union-attr]
    ps.subscribe(ch)
    ps.psubscribe(b"{ps-*")
    pub = ds.proxy.client()  # type: ignore[union-attr]
    wait_until(lambda: pub.publish(ch, "before") == 2, 10, "the subscriptions")
    assert {_one_message(ps)["type"], _one_message(ps)["type"]} == {"message", "pmessage"}
    if move == "reshard":
        reshard(ds, ch, "g1")
    else:
        admin(ds, "failover", "g2")
    # Re-subscribed on the new master (what was published meanwhile may be lost: at-most-once).
    wait_until(lambda: pub.publish(ch, "after") == 2, 10, "the subscriptions on the new master")
    got = [_one_message(ps) for _ in range(2)]
    while (m := ps.get_message(timeout=0.5)) is not None:  # drain the probes
        got.append(m)
    assert {(m["type"], m["data"]) for m in got if m["type"] != "subscribe"} >= {("message", b"after"),
                                                                                   ("pmessage", b"after")}
    ps.close()
