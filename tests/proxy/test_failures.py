"""Backends dying or stalling, client limits, passwords, workers and startup errors."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import redis

from kvstore_admin.processes import free_port, wait_until
from kvstore_cluster.slots import key_slot


def key_on(group_index: int, prefix: bytes = b"k") -> bytes:
    """A key whose slot belongs to g1/g2/g3 (index 0/1/2) under the even 3-way split."""
    lo, hi = [(0, 5461), (5462, 10922), (10923, 16383)][group_index]
    i = 0
    while True:
        k = prefix + b"%d" % i
        if lo <= key_slot(k) <= hi:
            return k
        i += 1


# A script that keeps its group busy for 1.5 s, so a pipeline behind it is in flight when the group dies.
_BUSY_SCRIPT = ("local t=redis.call('time'); local s=t[1]*1e6+t[2]; while true do local n=redis.call('time');"
                " if n[1]*1e6+n[2]-s > 1500000 then break end end return 1")


def _in_flight_on(proxy_port: int, gid: str) -> int:
    """Requests the proxy has sent to group ``gid``'s master and not had answered (INFO backends)."""
    info = redis.Redis(port=proxy_port, socket_timeout=5).info("backends")
    return sum(int(b["pending"]) + int(b["resp3_pending"]) for b in info.values()
               if isinstance(b, dict) and b.get("group") == gid)


def kill_g2_mid_pipeline(cluster, client: redis.Redis, read_g2) -> tuple[list[object], list[object]]:  # type: ignore[no-untyped-def]
    """Pipeline 2000 × (``read_g2(pipe, k2)``, GET k1), SIGKILL g2 while it is in flight.

    Asserts the pending g2 requests fail at once (not at the request timeout) and every g1 reply
    is right; returns (g2 replies, g1 replies). k1 must hold "1", k2 must be ``key_on(1)``.
    """
    k1, k2 = key_on(0), key_on(1)
    results: list[object] = []

    def pipeline() -> None:
        pipe = client.pipeline(transaction=False)
        pipe.eval(_BUSY_SCRIPT, 1, k2)
        for _ in range(2000):
            read_g2(pipe, k2)
            pipe.get(k1)
        t0 = time.monotonic()
        results.extend(pipe.execute(raise_on_error=False))
        results.append(time.monotonic() - t0)

    t = threading.Thread(target=pipeline)
    t.start()
    # The kill lands while the script runs, with at least the first read behind it in flight.
    wait_until(lambda: _in_flight_on(cluster.proxy.port, "g2") >= 2, 1.2, "the pipeline in flight on g2")
    cluster.nodes["g2"].signal(signal.SIGKILL)
    t.join(15)
    assert not t.is_alive()
    elapsed = results.pop()
    assert elapsed < 3, "pending requests must fail at once, not wait for the timeout"
    g2_replies, g1_replies = results[1::2], results[2::2]
    assert all(r == b"1" for r in g1_replies)
    assert all(isinstance(r, redis.ResponseError) and "g2" in str(r) for r in g2_replies)
    return g2_replies, g1_replies


def test_backend_killed_mid_pipeline_fails_its_requests_and_others_keep_working(proxy_cluster):
    cluster = proxy_cluster(3, "--timeout", "5")
    c = cluster.proxy.client()
    k1, k2 = key_on(0), key_on(1)
    c.set(k1, "1")
    c.set(k2, "2")
    g2_replies, _ = kill_g2_mid_pipeline(cluster, cluster.proxy.client(), lambda pipe, k: pipe.get(k))
    assert "connection lost" in str(g2_replies[0]) or "closed" in str(g2_replies[0])
    # while g2 is down: its keys fail fast with a clear error, g1 is served
    with pytest.raises(redis.ResponseError, match="backend g2 .* down"):
        c.get(k2)
    assert c.get(k1) == b"1"
    # a multi-key command touching the dead group fails as a whole, clearly
    with pytest.raises(redis.ResponseError, match="g2"):
        c.mget(k1, k2)
    assert c.info()["backend1"]["state"] == "down"


def test_backend_comes_back_and_is_reconnected(proxy_cluster):
    cluster = proxy_cluster(1)
    c = cluster.proxy.client()
    node = cluster.nodes["g1"]
    c.set("a", "1")
    node.signal(signal.SIGKILL)
    wait_until(lambda: not node.alive(), 5, "redis to die")
    with pytest.raises(redis.ResponseError):
        c.get("a")
    from kvstore_admin.processes import start_redis

    revived = start_redis(cluster.base / "revived", port=node.port)
    cluster.extra_procs.append(revived)
    wait_until(lambda: c.set("a", "2") and c.get("a") == b"2", 10, "the proxy to reconnect")


def test_stalled_backend_times_out_and_later_replies_line_up(proxy_cluster):
    cluster = proxy_cluster(2, "--timeout", "0.5")
    c = cluster.proxy.client()
    k1, k2 = key_on(0), key_on(1)
    c.set(k1, "one")
    c.set(k2, "two")
    node = cluster.nodes["g2"]
    node.signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        pipe = c.pipeline(transaction=False)
        pipe.get(k1)
        pipe.get(k2)
        pipe.get(k1)
        out = pipe.execute(raise_on_error=False)
        assert time.monotonic() - t0 < 3
        assert out[0] == b"one" and out[2] == b"one"
        assert isinstance(out[1], redis.ResponseError) and "timeout" in str(out[1])
    finally:
        node.signal(signal.SIGCONT)
    # the timed-out connection was replaced: replies match their requests again
    wait_until(lambda: c.get(k2) == b"two", 10, "g2 to answer again")
    for i in range(50):
        c.set(k2, b"%d" % i)
        assert c.get(k2) == b"%d" % i


def test_requirepass(proxy_cluster):
    cluster = proxy_cluster(2, "--requirepass", "s3cret", password="s3cret")
    c = cluster.proxy.client()
    assert c.set("x", "1") and c.get("x") == b"1"
    s = socket.create_connection(("127.0.0.1", cluster.proxy.port))
    s.sendall(b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n*2\r\n$4\r\nAUTH\r\n$5\r\nwrong\r\n"
              b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n*2\r\n$3\r\nGET\r\n$1\r\nx\r\n")
    want = (b"-NOAUTH Authentication required.\r\n"
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n+OK\r\n$1\r\n1\r\n")
    got = b""
    while len(got) < len(want):
        got += s.recv(100)
    assert got == want
    s.close()


def test_backend_password(proxy_cluster, tmp_path):
    from kvstore_admin.processes import start_redis
    from kvstore_cluster.model import Group, Groups
    from kvstore_cluster.store import ClusterStore

    cluster = proxy_cluster(1, start=False)
    locked = start_redis(tmp_path / "locked", password="bpw")
    cluster.extra_procs.append(locked)
    zk = cluster.zk()
    store = ClusterStore(zk, "test")
    v = store.read_groups()
    store.set_groups(Groups((Group("g1", locked.address),)), v.version)
    zk.stop()
    c = cluster.start_proxy("--backend-password", "bpw").client()
    assert c.set("a", "1") and c.get("a") == b"1"


def test_max_clients(proxy_cluster):
    cluster = proxy_cluster(1, "--max-clients", "2")
    a, b = cluster.proxy.client(), cluster.proxy.client()
    assert a.ping() and b.ping()
    s = socket.create_connection(("127.0.0.1", cluster.proxy.port), timeout=5)
    assert s.recv(100) == b"-ERR max number of clients reached\r\n"
    assert s.recv(100) == b""
    a.close()
    wait_until(lambda: redis.Redis(port=cluster.proxy.port, protocol=2).ping(), 5, "a free slot")


def test_idle_clients_are_closed(proxy_cluster):
    cluster = proxy_cluster(1, "--idle-timeout", "0.5")
    s = socket.create_connection(("127.0.0.1", cluster.proxy.port), timeout=5)
    s.sendall(b"PING\r\n")
    assert s.recv(100) == b"+PONG\r\n"
    t0 = time.monotonic()
    assert s.recv(100) == b""
    assert 0.3 < time.monotonic() - t0 < 3


def test_request_size_limit(proxy_cluster):
    cluster = proxy_cluster(1, "--max-request-size", "1000")
    c = cluster.proxy.client()
    assert c.set("ok", "x" * 1000)
    with pytest.raises(redis.ResponseError, match="^Protocol error: invalid bulk length$"):
        c.set("big", "x" * 1001)
    assert cluster.proxy.client().get("ok") == b"x" * 1000


def test_two_workers_share_the_port_and_stop_cleanly_on_sigterm(proxy_cluster):
    cluster = proxy_cluster(2, workers=2)
    proxy = cluster.proxy
    zk = cluster.zk()
    try:
        wait_until(lambda: len(zk.get_children("/kvstore/test/proxies")) == 2, 10, "two registrations")
        pids = set()
        for _ in range(40):
            c = proxy.client()
            pids.add(c.info("server")["process_id"])
            assert c.set("w", "1") and c.get("w") == b"1"
            c.close()
        assert len(pids) == 2, "both workers accept connections"
        assert proxy.stop() == 0
        wait_until(lambda: zk.get_children("/kvstore/test/proxies") == [], 10, "deregistration")
    finally:
        zk.stop()


def test_unreachable_zookeeper_is_one_clear_line_and_a_nonzero_exit():
    port = free_port()
    out = subprocess.run([sys.executable, "-m", "kvstore_proxy", "--zk", f"127.0.0.1:{port}", "--workers", "1",
                          "--zk-session-timeout", "2", "--listen", f"127.0.0.1:{free_port()}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"kvstore-proxy: cannot reach ZooKeeper at 127.0.0.1:{port}" in out.stderr


def test_bad_flags_are_usage_errors():
    out = subprocess.run([sys.executable, "-m", "kvstore_proxy", "--listen", "nowhere"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "Invalid value for '--listen'" in out.stderr
    out = subprocess.run([sys.executable, "-m", "kvstore_proxy", "--workers", "0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--workers" in out.stderr
