"""CLIENT KILL / REPLY / NO-EVICT / UNPAUSE and RESET for the proxy's own clients."""

from __future__ import annotations

import socket
import time

import pytest
import redis

from .conftest import ProxyCluster


class Raw:
    """A raw RESP connection: what is sent is exactly what the test says, replies read as bytes."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)

    def send(self, *commands: list[str]) -> None:
        out = b""
        for args in commands:
            out += b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args)
        self.sock.sendall(out)

    def read(self, expect: bytes, timeout: float = 5.0) -> bytes:
        """Bytes until they end with ``expect`` (fails after ``timeout``)."""
        got = b""
        deadline = time.monotonic() + timeout
        while not got.endswith(expect):
            assert time.monotonic() < deadline, got
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed after {got!r}"
            got += chunk
        return got

    def quiet(self, seconds: float = 0.3) -> bytes:
        """Whatever arrives within ``seconds`` (nothing is expected)."""
        self.sock.settimeout(seconds)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return b""

    def close(self) -> None:
        self.sock.close()


def _ids(pc: redis.Redis) -> dict[int, dict]:  # type: ignore[type-arg]
    return {int(c["id"]): c for c in pc.client_list()}


def test_client_kill_by_filters_and_legacy(shared_cluster: ProxyCluster) -> None:
    assert shared_cluster.proxy is not None
    me = shared_cluster.proxy.client()
    others = [shared_cluster.proxy.client() for _ in range(3)]
    their_ids = [o.client_id() for o in others]
    listed = _ids(me)
    assert me.client_kill_filter(_id=their_ids[0]) == 1
    assert me.client_kill_filter(addr=listed[their_ids[1]]["addr"]) == 1
    assert me.client_kill_filter(laddr=listed[their_ids[2]]["laddr"], skipme=True) >= 1
    deadline = time.monotonic() + 5
    while set(their_ids) & set(_ids(me)):  # their connections are gone
        assert time.monotonic() < deadline, _ids(me)
        time.sleep(0.02)
    assert me.ping()  # SKIPME yes by default: the caller stays
    assert me.client_kill_filter(_type="pubsub") == 0
    assert me.client_kill_filter(user="nobody") == 0
    victim = shared_cluster.proxy.client()
    victim_addr = _ids(victim)[victim.client_id()]["addr"]
    assert me.client_kill(victim_addr) is True  # the legacy form
    with pytest.raises(redis.ResponseError, match="No such client"):
        me.client_kill("127.0.0.1:1")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        me.execute_command("CLIENT", "KILL", "COLOUR", "blue")
    with pytest.raises(redis.ResponseError, match="greater than 0"):
        me.execute_command("CLIENT", "KILL", "ID", "x")
    # killing itself: the reply first, then the connection closes
    raw = Raw(shared_cluster.proxy.port)
    raw.send(["CLIENT", "KILL", "USER", "default", "SKIPME", "no"])
    got = raw.read(b"\r\n")
    assert got.startswith(b":") and int(got[1:-2]) >= 1
    assert raw.quiet(2) == b""  # closed
    raw.close()


def test_client_reply_off_skip_on(shared_cluster: ProxyCluster) -> None:
    assert shared_cluster.proxy is not None
    raw = Raw(shared_cluster.proxy.port)
    raw.send(["SET", "cr:a", "1"], ["CLIENT", "REPLY", "OFF"], ["SET", "cr:b", "2"], ["GET", "cr:a"],
             ["INCR", "cr:n"], ["CLIENT", "REPLY", "ON"], ["GET", "cr:b"])
    assert raw.read(b"$1\r\n2\r\n") == b"+OK\r\n+OK\r\n$1\r\n2\r\n"  # nothing between OFF and ON
    raw.send(["CLIENT", "REPLY", "SKIP"], ["INCR", "cr:n"], ["GET", "cr:n"])
    assert raw.read(b"\r\n2\r\n") == b"$1\r\n2\r\n"  # both INCRs ran, one reply
    raw.send(["CLIENT", "REPLY", "OFF"], ["PING"], ["RESET"], ["PING"])
    assert raw.read(b"+PONG\r\n") == b"+RESET\r\n+PONG\r\n"  # RESET turns replies back on
    raw.send(["CLIENT", "REPLY", "MAYBE"])
    assert raw.read(b"\r\n").startswith(b"-ERR syntax error")
    raw.close()


def test_no_evict_unpause_and_reset(shared_cluster: ProxyCluster) -> None:
    assert shared_cluster.proxy is not None
    pc = shared_cluster.proxy.client()
    assert pc.execute_command("CLIENT", "NO-EVICT", "on") == b"OK"
    assert pc.execute_command("CLIENT", "NO-EVICT", "off") == b"OK"
    with pytest.raises(redis.ResponseError, match="syntax error"):
        pc.execute_command("CLIENT", "NO-EVICT", "perhaps")
    assert pc.execute_command("CLIENT", "UNPAUSE") == b"OK"
    raw = Raw(shared_cluster.proxy.port)
    raw.send(["CLIENT", "SETNAME", "before"], ["HELLO", "3"], ["MULTI"], ["RESET"], ["CLIENT", "GETNAME"],
             ["SET", "rs:k", "v"])
    got = raw.read(b"+OK\r\n+RESET\r\n$-1\r\n+OK\r\n", timeout=5)  # out of MULTI, RESP2, no name
    assert got.endswith(b"+OK\r\n+RESET\r\n$-1\r\n+OK\r\n")
    raw.close()
