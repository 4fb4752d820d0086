"""Blocking commands through the proxy: Redis's replies, timeouts, held pipelines, disconnects, 1,000 waiters."""

from __future__ import annotations

import resource
import signal
import socket
import statistics
import threading
import time

import hiredis
import pytest
import redis

from kvstore_admin.processes import wait_until
from kvstore_proxy.blocking import pushback

from .conftest import ProxyProcess
from .stateful_helpers import blocked_clients, elapsed, reset_socket, wait_blocked
from .test_commands import keys_on_every_group
from .test_failures import key_on
from .test_resp3 import Raw

# (setup, the blocking command, what unblocks it): the proxy must answer byte for byte as Redis does.
CASES = {
    "blpop": ([], ("BLPOP", "{b}l1", "{b}l2", "0"), ("RPUSH", "{b}l2", "a", "b")),
    "brpop": ([], ("BRPOP", "{b}l1", "0"), ("RPUSH", "{b}l1", "a", "b")),
    "brpoplpush": ([], ("BRPOPLPUSH", "{b}l1", "{b}l2", "0"), ("RPUSH", "{b}l1", "x")),
    "blmove": ([], ("BLMOVE", "{b}l1", "{b}l2", "LEFT", "RIGHT", "0"), ("RPUSH", "{b}l1", "x", "y")),
    "blmpop": ([], ("BLMPOP", "0", "2", "{b}l1", "{b}l2", "RIGHT", "COUNT", "2"), ("RPUSH", "{b}l2", "a", "b", "c")),
    "bzpopmin": ([], ("BZPOPMIN", "{b}z", "0"), ("ZADD", "{b}z", "1.5", "m", "2", "n")),
    "bzpopmax": ([], ("BZPOPMAX", "{b}z", "0"), ("ZADD", "{b}z", "1.5", "m", "2", "n")),
    "bzmpop": ([], ("BZMPOP", "0", "1", "{b}z", "MIN", "COUNT", "2"), ("ZADD", "{b}z", "1", "a", "2", "b", "3", "c")),
    "xread": ([], ("XREAD", "BLOCK", "0", "STREAMS", "{b}s", "$"), ("XADD", "{b}s", "1-1", "f", "v")),
    "xreadgroup": ([("XGROUP", "CREATE", "{b}s", "g", "$", "MKSTREAM")],
                   ("XREADGROUP", "GROUP", "g", "c", "BLOCK", "0", "STREAMS", "{b}s", ">"),
                   ("XADD", "{b}s", "1-1", "f", "v")),
}


def _blocked_anywhere(nodes: list[redis.Redis]) -> int:
    return sum(blocked_clients(n) for n in nodes)


def _block_then_unblock(port: int, nodes: list[redis.Redis], protocol: int, case: str) -> list[bytes]:
    setup, blocking, push = CASES[case]
    waiter, other = Raw(port), Raw(port)
    try:
        for conn in (waiter, other):
            conn.call("HELLO", str(protocol))
        for args in setup:
            other.call(*args)
        waiter.send(blocking)
        wait_until(lambda: _blocked_anywhere(nodes) == 1, 10, f"{case} to block")
        pushed = other.call(*push)
        got = waiter.read()
        # the same command with the data there already, and with nothing there and a short timeout
        again = blocking[:-1] + ("0.1",) if not case.startswith("x") else blocking
        if case.startswith("x"):
            at = blocking.index("BLOCK")
            again = (*blocking[: at + 1], "100", *blocking[at + 2 :])
        other.call(*push)
        now = waiter.call(*again)
        for _ in range(3):
            waiter.call(*again)  # drain
        timed_out = waiter.call(*again)
        return [pushed, got, now, timed_out]
    finally:
        waiter.close()
        other.close()


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_blocking_command_answers_as_redis_does(shared_cluster, model_server, protocol: int, case: str) -> None:
    shared_cluster.flush_all()
    model = redis.Redis(port=model_server.port)
    model.flushall()
    nodes = [shared_cluster.direct(g) for g in shared_cluster.nodes]
    proxied = _block_then_unblock(shared_cluster.proxy.port, nodes, protocol, case)
    direct = _block_then_unblock(model_server.port, [model], protocol, case)
    if case.startswith("x"):  # stream IDs of the later XADDs differ with the clock
        proxied, direct = proxied[:2], direct[:2]
    assert proxied == direct


@pytest.mark.parametrize("protocol", [2, 3])
def test_timeouts_are_honoured_and_zero_waits_until_data(shared_cluster, protocol: int) -> None:
    c = shared_cluster.proxy.client(protocol=protocol)
    value, took = elapsed(c.blpop, ["{b}none"], 0.6)
    assert value is None and 0.55 < took < 2.0
    value, took = elapsed(c.xread, {"{b}st": "$"}, block=400)
    assert not value and 0.35 < took < 2.0
    pusher = threading.Timer(0.8, lambda: shared_cluster.proxy.client().rpush("{b}later", "x"))
    pusher.start()
    value, took = elapsed(c.blpop, ["{b}later"], 0)
    assert list(value) == [b"{b}later", b"x"] and took >= 0.7


def test_the_proxy_request_timeout_never_cuts_a_blocking_command(shared_cluster, tmp_path) -> None:
    proxy = ProxyProcess(shared_cluster.zk_hosts, shared_cluster.name, tmp_path / "p.log", "--timeout", "0.3")
    try:
        c = redis.Redis(port=proxy.port, socket_timeout=10)
        value, took = elapsed(c.brpop, ["{b}slow"], 1.5)
        assert value is None and took >= 1.45
        threading.Timer(1.0, lambda: c.connection_pool.make_connection().send_command("RPUSH", "{b}slow", "v")).start()
        value, took = elapsed(redis.Redis(port=proxy.port, socket_timeout=10).blpop, ["{b}slow"], 0)
        assert list(value) == [b"{b}slow", b"v"] and took >= 0.9
        assert c.ping()
    finally:
        proxy.stop()


def test_keys_in_two_slots_are_crossslot(shared_cluster, pc) -> None:
    a, b = keys_on_every_group(shared_cluster, 1)[:2]
    with pytest.raises(redis.ResponseError, match="same slot"):
        pc.blpop([a, b], 1)
    with pytest.raises(redis.ResponseError, match="same slot"):
        pc.blmove(a, b, 1)
    assert pc.ping()


def test_requests_after_a_blocking_command_wait_for_it(shared_cluster, pc) -> None:
    """As on one Redis connection: what the client pipelined after BLPOP runs once BLPOP returned."""
    shared_cluster.flush_all()
    nodes = [shared_cluster.direct(g) for g in shared_cluster.nodes]
    conn = Raw(shared_cluster.proxy.port)
    try:
        conn.send(("BLPOP", "{b}q", "0"), ("SET", "{b}after", "1"), ("LPOP", "{b}q"), ("GET", "{b}after"))
        wait_until(lambda: _blocked_anywhere(nodes) == 1, 10, "BLPOP to block")
        assert pc.get("{b}after") is None  # not run yet
        pc.rpush("{b}q", "first", "second")
        assert conn.read() == b"*2\r\n$4\r\n{b}q\r\n$5\r\nfirst\r\n"
        assert conn.read() == b"+OK\r\n"
        assert conn.read() == b"$6\r\nsecond\r\n"
        assert conn.read() == b"$1\r\n1\r\n"
    finally:
        conn.close()


def test_a_client_killed_while_blocked_frees_its_lease_and_pops_nothing(shared_cluster, pc) -> None:
    shared_cluster.flush_all()
    k = key_on(1, b"kq")
    g2 = shared_cluster.direct("g2")
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", shared_cluster.proxy.port))
        sock.sendall(hiredis.pack_command(("BLPOP", k, "0")))
        wait_blocked(g2, 1)
        reset_socket(sock)
        wait_blocked(g2, 0)  # unblocked on the master: the lease is free
    pc.rpush(k, "for-nobody")
    assert pc.lrange(k, 0, -1) == [b"for-nobody"]


def test_pushback_undoes_each_kind_of_pop() -> None:
    """The command that returns an element popped for a client that had just disconnected."""
    assert pushback(b"blpop", [], [b"k", b"e"]) == [b"LPUSH", b"k", b"e"]
    assert pushback(b"brpop", [], [b"k", b"e"]) == [b"RPUSH", b"k", b"e"]
    args = [b"BLMPOP", b"0", b"2", b"a", b"b", b"LEFT", b"COUNT", b"2"]
    assert pushback(b"blmpop", args, [b"b", [b"e1", b"e2"]]) == [b"LPUSH", b"b", b"e2", b"e1"]
    args[5] = b"right"
    assert pushback(b"blmpop", args, [b"b", [b"e1", b"e2"]]) == [b"RPUSH", b"b", b"e2", b"e1"]
    assert pushback(b"bzpopmin", [], [b"z", b"m", b"1.5"]) == [b"ZADD", b"z", b"1.5", b"m"]
    assert pushback(b"bzpopmax", [], [b"z", b"m", 2.25]) == [b"ZADD", b"z", b"2.25", b"m"]  # RESP3 double
    assert pushback(b"bzmpop", [], [b"z", [[b"a", b"1"], [b"b", b"2"]]]) == [b"ZADD", b"z", b"1", b"a", b"2", b"b"]
    for name in (b"blmove", b"brpoplpush", b"xread", b"xreadgroup"):
        assert pushback(name, [], [b"x"]) is None


def test_a_thousand_blocked_clients_do_not_slow_anyone_else(shared_cluster) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4000:
        pytest.skip(f"needs 4000 file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4000), hard))
    shared_cluster.flush_all()
    nodes = [shared_cluster.direct(g) for g in shared_cluster.nodes]
    keys = keys_on_every_group(shared_cluster, 334)[:1000]
    other = shared_cluster.proxy.client()

    def latencies() -> list[float]:
        out = []
        for i in range(300):
            t0 = time.perf_counter()
            other.set(b"other:%d" % (i % 7), i)
            other.get(b"other:%d" % (i % 5))
            out.append(time.perf_counter() - t0)
        return out

    latencies()  # warm up
    before = statistics.median(latencies())
    socks = []
    try:
        for k in keys:
            s = socket.create_connection(("127.0.0.1", shared_cluster.proxy.port), timeout=30)
            s.sendall(hiredis.pack_command(("BLPOP", k, "0")))
            socks.append(s)
        wait_until(lambda: _blocked_anywhere(nodes) == 1000, 60, "1000 clients blocked on the masters")
        during = statistics.median(latencies())
        print(f"median GET+SET {before * 1e3:.3f} ms before, {during * 1e3:.3f} ms with 1000 blocked")
        assert during < before * 3 + 0.002, f"median GET+SET {before * 1e3:.2f} ms before, {during * 1e3:.2f} during"
        pipe = other.pipeline(transaction=False)
        for k in keys:
            pipe.rpush(k, b"for-" + k)
        pipe.execute()
        for k, s in zip(keys, socks, strict=True):
            reader = hiredis.Reader()
            while (reply := reader.gets()) is False:
                reader.feed(s.recv(4096))
            assert reply == [k, b"for-" + k]
        assert _blocked_anywhere(nodes) == 0
        assert other.exists(*keys) == 0  # every element went to its one waiter
    finally:
        for s in socks:
            s.close()


def test_a_blocked_client_learns_the_outcome_is_unknown_when_its_master_dies(proxy_cluster) -> None:
    cluster = proxy_cluster(3)
    c = cluster.proxy.client()
    k = key_on(1, b"dies")
    result: list[object] = []

    def wait() -> None:
        try:
            result.append(c.blpop([k], 0))
        except redis.RedisError as exc:
            result.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    wait_blocked(cluster.direct("g2"), 1)
    t0 = time.monotonic()
    cluster.nodes["g2"].signal(signal.SIGKILL)
    t.join(10)
    assert not t.is_alive() and time.monotonic() - t0 < 3
    assert isinstance(result[0], redis.ResponseError) and "outcome unknown" in str(result[0])
    # the other groups never noticed
    assert c.set(key_on(0), "fine") and c.get(key_on(0)) == b"fine"
