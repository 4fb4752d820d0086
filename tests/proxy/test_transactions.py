"""MULTI/EXEC/DISCARD/WATCH/UNWATCH through the proxy: Redis's replies byte for byte, slots, the per-group option."""

from __future__ import annotations

import threading

import pytest
import redis
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore_admin.cli import cli
from kvstore_admin.processes import wait_until
from kvstore_cluster.slots import key_slot

from .stateful_helpers import exchange
from .test_commands import keys_on_every_group

# Scripts whose every key is in slot {t}: the proxy must answer exactly as one redis-server does.
SCRIPTS = {
    "runtime error inside": [("MULTI",), ("SET", "{t}a", "1"), ("INCR", "{t}a"), ("LPUSH", "{t}a", "x"),
                             ("GET", "{t}a"), ("EXEC",)],
    "nested MULTI": [("MULTI",), ("MULTI",), ("SET", "{t}a", "1"), ("EXEC",)],
    "WATCH inside MULTI": [("MULTI",), ("WATCH", "{t}a"), ("INCR", "{t}a"), ("EXEC",)],
    "unknown command": [("MULTI",), ("FOO", "x"), ("SET", "{t}a", "1"), ("EXEC",), ("GET", "{t}a")],
    "wrong arity": [("MULTI",), ("GET",), ("EXEC",)],
    "without MULTI": [("EXEC",), ("DISCARD",), ("UNWATCH",), ("WATCH", "{t}a", "{t}b"), ("UNWATCH",)],
    "discard": [("MULTI",), ("SET", "{t}a", "1"), ("DISCARD",), ("GET", "{t}a"), ("EXEC",)],
    "empty": [("MULTI",), ("EXEC",)],
    "keyless": [("MULTI",), ("PING",), ("ECHO", "x"), ("PING", "y"), ("EXEC",)],
    "blocking runs without blocking": [("MULTI",), ("BLPOP", "{t}q", "0"), ("RPUSH", "{t}q", "a"),
                                       ("BLMOVE", "{t}q", "{t}r", "LEFT", "RIGHT", "0"), ("EXEC",)],
    "watch then exec": [("WATCH", "{t}a"), ("MULTI",), ("INCR", "{t}a"), ("EXEC",), ("GET", "{t}a")],
    "watched key changed": [("WATCH", "{t}a"), ("SET", "{t}a", "5"), ("MULTI",), ("INCR", "{t}a"), ("EXEC",),
                            ("GET", "{t}a")],
    "watch, empty exec": [("WATCH", "{t}a"), ("MULTI",), ("EXEC",), ("WATCH", "{t}a"), ("SET", "{t}a", "1"),
                          ("MULTI",), ("EXEC",)],
    "unwatch": [("WATCH", "{t}a"), ("SET", "{t}a", "5"), ("UNWATCH",), ("MULTI",), ("INCR", "{t}a"),
                ("EXEC",)],
    "discard unwatches": [("WATCH", "{t}a"), ("SET", "{t}a", "5"), ("MULTI",), ("DISCARD",), ("MULTI",),
                          ("INCR", "{t}a"), ("EXEC",)],
    "reset": [("WATCH", "{t}a"), ("MULTI",), ("SET", "{t}a", "1"), ("RESET",), ("EXEC",), ("GET", "{t}a")],
    "hashes and scores": [("MULTI",), ("HSET", "{t}h", "f", "v"), ("HGETALL", "{t}h"), ("ZADD", "{t}z", "1.5", "m"),
                          ("ZSCORE", "{t}z", "m"), ("GET", "{t}none"), ("EXEC",)],
    "pipelined after exec": [("SET", "{t}c", "1"), ("MULTI",), ("INCR", "{t}c"), ("EXEC",), ("INCR", "{t}c"),
                             ("MULTI",), ("GET", "{t}c"), ("EXEC",)],
}


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_replies_are_those_of_one_redis_server(shared_cluster, model_server, protocol: int, name: str) -> None:
    shared_cluster.flush_all()
    redis.Redis(port=model_server.port).flushall()
    script = SCRIPTS[name]
    assert exchange(shared_cluster.proxy.port, script, protocol) == exchange(model_server.port, script, protocol)


TKEYS = [b"{t}a", b"{t}b", b"{t}c"]
tcommand = st.one_of(
    st.tuples(st.just(b"SET"), st.sampled_from(TKEYS), st.sampled_from([b"1", b"x", b"10"])),
    st.tuples(st.just(b"INCR"), st.sampled_from(TKEYS)),
    st.tuples(st.just(b"GET"), st.sampled_from(TKEYS)),
    st.tuples(st.just(b"RPUSH"), st.sampled_from(TKEYS), st.just(b"v")),
    st.tuples(st.just(b"MULTI")),
    st.tuples(st.just(b"EXEC")),
    st.tuples(st.just(b"DISCARD")),
    st.tuples(st.just(b"WATCH"), st.sampled_from(TKEYS)),
    st.tuples(st.just(b"UNWATCH")),
    st.tuples(st.just(b"NOSUCHCMD")),
    st.tuples(st.just(b"GET")),
    st.tuples(st.just(b"PING")),
)


@pytest.mark.parametrize("protocol", [2, 3])
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(commands=st.lists(tcommand, min_size=1, max_size=25))
def test_random_transaction_sequences_match_one_redis_server(shared_cluster, model_server, protocol, commands):
    shared_cluster.flush_all()
    redis.Redis(port=model_server.port).flushall()
    assert exchange(shared_cluster.proxy.port, commands, protocol) == exchange(model_server.port, commands, protocol)


def test_a_key_of_another_slot_is_crossslot_when_queued_and_exec_aborts(shared_cluster, pc) -> None:
    a, b, c = keys_on_every_group(shared_cluster, 1)
    replies = exchange(shared_cluster.proxy.port, [("MULTI",), ("SET", a, "1"), ("SET", b, "2"), ("EXEC",)])
    assert replies == [b"+OK\r\n", b"+QUEUED\r\n", b"-CROSSSLOT Keys in request don't hash to the same slot\r\n",
                       b"-EXECABORT Transaction discarded because of previous errors.\r\n"]
    assert pc.exists(a, b) == 0
    # one command whose own keys span slots, WATCHed keys of another slot, a WATCH across slots
    assert exchange(shared_cluster.proxy.port, [("MULTI",), ("MSET", a, "1", b, "2"), ("EXEC",)])[1:] == [
        b"-CROSSSLOT Keys in request don't hash to the same slot\r\n",
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"]
    assert exchange(shared_cluster.proxy.port, [("WATCH", a), ("MULTI",), ("SET", c, "1"), ("EXEC",)])[2:] == [
        b"-CROSSSLOT Keys in request don't hash to the same slot\r\n",
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"]
    assert exchange(shared_cluster.proxy.port, [("WATCH", a, b), ("WATCH", a), ("WATCH", c)]) == [
        b"-CROSSSLOT Keys in request don't hash to the same slot\r\n", b"+OK\r\n",
        b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"]
    # redis-py's transactional pipeline sees the same
    pipe = pc.pipeline(transaction=True)
    pipe.set(a, 1)
    pipe.set(b, 2)
    with pytest.raises(redis.ResponseError, match="same slot"):
        pipe.execute()
    assert pc.exists(a, b) == 0


def test_commands_the_proxy_cannot_queue_doom_the_transaction(shared_cluster) -> None:
    replies = exchange(shared_cluster.proxy.port, [
        ("MULTI",), ("SET", "{t}a", "1"), ("DBSIZE",), ("SUBSCRIBE", "ch"), ("CONFIG", "GET", "x"), ("EXEC",)])
    assert replies[2] == b"-ERR DBSIZE inside MULTI is not supported by kvstore-proxy\r\n"
    assert replies[3] == b"-ERR SUBSCRIBE inside MULTI is not supported by kvstore-proxy\r\n"
    assert replies[4] == b"-ERR CONFIG GET inside MULTI is not supported by kvstore-proxy\r\n"
    assert replies[5] == b"-EXECABORT Transaction discarded because of previous errors.\r\n"


@pytest.mark.parametrize("protocol", [2, 3])
def test_watch_lets_concurrent_increments_retry_and_none_is_lost(shared_cluster, protocol: int) -> None:
    """redis-py's transaction() helper: WATCH, read, MULTI/EXEC, retry on nil; 4 threads racing."""
    shared_cluster.flush_all()
    errors: list[BaseException] = []

    def worker() -> None:
        client = shared_cluster.proxy.client(protocol=protocol)
        try:
            for _ in range(40):
                def incr(pipe: redis.client.Pipeline) -> None:
                    value = int(pipe.get("{w}n") or 0)
                    pipe.multi()
                    pipe.set("{w}n", value + 1)
                    pipe.rpush("{w}log", value)
                client.transaction(incr, "{w}n")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    check = shared_cluster.proxy.client()
    assert check.get("{w}n") == b"160"
    assert check.lrange("{w}log", 0, -1) == [b"%d" % i for i in range(160)]  # each value read exactly once


def test_a_watch_is_a_clean_lease_again_after_the_client_left(shared_cluster, pc) -> None:
    """A client that WATCHed and vanished must not leave its WATCH on a lease another client gets."""
    for i in range(5):
        gone = shared_cluster.proxy.client()
        gone.execute_command("WATCH", "{t}a")
        gone.close()
        pc.set("{t}a", "changed")
        pipe = pc.pipeline(transaction=True)
        pipe.incr("{t}n")
        assert pipe.execute() == [i + 1]  # a stale WATCH on the lease would make EXEC answer nil


def test_transactions_reuse_their_backend_connections(shared_cluster, pc) -> None:
    g = {gid: shared_cluster.direct(gid) for gid in shared_cluster.nodes}
    owner = next(gid for gid, c in g.items() if c.set("{t}probe", 1) and c.exists("{t}probe"))
    shared_cluster.flush_all()
    for _ in range(3):  # warm: the lease is opened once
        pc.pipeline(transaction=True).incr("{t}n").execute()
    before = int(g[owner].info("clients")["connected_clients"])
    for i in range(50):
        assert pc.pipeline(transaction=True).incr("{t}n").execute() == [4 + i]
    assert int(g[owner].info("clients")["connected_clients"]) == before


def _admin(cluster, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, ["--zk", cluster.zk_hosts, "--cluster", cluster.name, *args],
                              catch_exceptions=False)


def test_per_group_option_runs_one_atomic_transaction_per_group(shared_cluster, pc) -> None:
    keys = keys_on_every_group(shared_cluster, 3)
    try:
        assert _admin(shared_cluster, "option", "set", "transactions", "per-group").exit_code == 0

        def applied() -> bool:
            replies = exchange(shared_cluster.proxy.port, [("MULTI",), ("SET", keys[0], "x"), ("SET", keys[1], "y"),
                                                          ("EXEC",)])
            return replies[-1] == b"*2\r\n+OK\r\n+OK\r\n"

        wait_until(applied, 10, "the proxy to apply transactions per-group")
        # Django's cache set_many: a transactional pipeline of SETs over every group
        pipe = pc.pipeline(transaction=True)
        for k in keys:
            pipe.set(k, b"v-" + k, px=60000)
        assert pipe.execute() == [True] * len(keys)
        assert pc.mget(keys) == [b"v-" + k for k in keys]
        # replies merged in queue order, a runtime error where its command was
        pipe = pc.pipeline(transaction=True)
        pipe.incr(keys[1]).get(keys[0]).lpush(keys[2], "x").get(keys[2]).ping()
        out = pipe.execute(raise_on_error=False)
        assert isinstance(out[0], redis.ResponseError) and out[1] == b"v-" + keys[0]
        assert isinstance(out[2], redis.ResponseError) and out[3] == b"v-" + keys[2] and out[4] is True
        # WATCH still pins the transaction to one slot
        replies = exchange(shared_cluster.proxy.port, [("WATCH", keys[0]), ("MULTI",), ("SET", keys[1], "1"),
                                                      ("EXEC",)])
        assert replies[2:] == [b"-CROSSSLOT Keys in request don't hash to the same slot\r\n",
                               b"-EXECABORT Transaction discarded because of previous errors.\r\n"]
        got = _admin(shared_cluster, "option", "get", "transactions", "--json")
        assert '"value": "per-group"' in got.output
    finally:
        assert _admin(shared_cluster, "option", "set", "transactions", "single-slot").exit_code == 0
    wait_until(lambda: exchange(shared_cluster.proxy.port, [("MULTI",), ("SET", keys[0], "x"), ("SET", keys[1], "y"),
                                                            ("EXEC",)])[-1].startswith(b"-EXECABORT"),
               10, "the proxy to apply transactions single-slot")


def test_keyless_transaction_runs_and_exec_waits_for_earlier_writes(shared_cluster) -> None:
    # every request in one write: EXEC must see the SET sent before it on the shared connection,
    # and the GET after it must see EXEC's writes
    script = [("SET", "{o}k", "5")] + [("MULTI",), ("INCR", "{o}k"), ("EXEC",)] * 20 + [("GET", "{o}k")]
    shared_cluster.flush_all()
    replies = exchange(shared_cluster.proxy.port, script)
    assert replies[-1] == b"$2\r\n25\r\n"
    assert [r for r in replies[1:-1] if r.startswith(b"*")] == [b"*1\r\n:%d\r\n" % i for i in range(6, 26)]
    assert key_slot(b"{o}k") >= 0
