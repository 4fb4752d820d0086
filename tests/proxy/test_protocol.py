"""Bad and odd input on a raw socket: the offender gets a Redis-like error, everyone else is served."""

from __future__ import annotations

import socket
import time

import pytest


def conn(shared_cluster) -> socket.socket:  # type: ignore[no-untyped-def]
    s = socket.create_connection(("127.0.0.1", shared_cluster.proxy.port), timeout=10)
    return s


def read_until_closed(s: socket.socket, timeout: float = 10) -> bytes:
    s.settimeout(timeout)
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def read_exactly(s: socket.socket, want: bytes, timeout: float = 10) -> bytes:
    s.settimeout(timeout)
    out = b""
    while len(out) < len(want):
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


@pytest.mark.parametrize(("payload", "error"), [
    (b"*1\r\n$4\r\nPING\r\n*x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n:5\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n"),
    (b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$99999999999\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$-5\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*1\r\n$4\r\nPING\r\n*3000000000\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*1\r\n$4\r\nPING\r\nSET a \"b\r\n", b"-ERR Protocol error: unbalanced quotes in request\r\n"),
])
def test_malformed_requests_get_a_protocol_error_and_the_connection_closes(shared_cluster, payload, error):
    s = conn(shared_cluster)
    s.sendall(payload)
    assert read_until_closed(s) == b"+PONG\r\n" + error
    s.close()
    assert shared_cluster.proxy.client().ping()


@pytest.mark.parametrize("element", [b"+foo\r\n", b":5\r\n", b"*1\r\n$3\r\nfoo\r\n", b"-foo\r\n",
                                     b"=7\r\ntxt:foo\r\n", b"(123\r\n"])
def test_request_elements_that_are_not_bulk_strings_are_refused_like_redis(shared_cluster, model_server, element):
    # hiredis reads "+foo" (and RESP3's "=" and "(") as a string: re-encoded as "$3 foo", the
    # request would lose its boundary and the bytes after it would be parsed as requests.
    payload = b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n" + element + b"*1\r\n$4\r\nPING\r\n"
    want = b"+PONG\r\n-ERR Protocol error: expected '$', got '%c'\r\n" % element[0]
    for port in (model_server.port, shared_cluster.proxy.port):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(payload)
        assert read_until_closed(s) == want, port
        s.close()
    assert shared_cluster.proxy.client().ping()


def test_inline_commands_like_telnet(shared_cluster):
    s = conn(shared_cluster)
    s.sendall(b"PING\r\nset inl \"a b\"\r\nget inl\nPING hello\r\n")
    assert read_exactly(s, b"+PONG\r\n+OK\r\n$3\r\na b\r\n$5\r\nhello\r\n") == \
        b"+PONG\r\n+OK\r\n$3\r\na b\r\n$5\r\nhello\r\n"
    # an inline line split over two reads, then multibulk on the same connection
    s.sendall(b"GET i")
    time.sleep(0.05)
    s.sendall(b"nl\r\n*1\r\n$4\r\nPING\r\n")
    assert read_exactly(s, b"$3\r\na b\r\n+PONG\r\n") == b"$3\r\na b\r\n+PONG\r\n"
    s.close()


def test_requests_split_at_every_byte_are_parsed(shared_cluster):
    s = conn(shared_cluster)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = b"*3\r\n$3\r\nSET\r\n$5\r\nsplit\r\n$5\r\nv\r\nxy\r\n*2\r\n$3\r\nGET\r\n$5\r\nsplit\r\n"
    for i in range(len(payload)):
        s.sendall(payload[i : i + 1])
        time.sleep(0.001)
    assert read_exactly(s, b"+OK\r\n$5\r\nv\r\nxy\r\n") == b"+OK\r\n$5\r\nv\r\nxy\r\n"
    s.close()


def test_huge_multibulk_count_sent_a_few_bytes_at_a_time_is_refused(shared_cluster):
    # hiredis would allocate the list when the header is complete: the count must be caught
    # however it is split across reads
    s = conn(shared_cluster)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for piece in (b"*1\r\n$4\r\nPING\r\n*3", b"00", b"000", b"0000", b"\r\n"):
        s.sendall(piece)
        time.sleep(0.02)
    assert read_until_closed(s) == b"+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n"
    s.close()
    assert shared_cluster.proxy.client().ping()


def test_empty_multibulk_is_ignored_like_redis(shared_cluster):
    s = conn(shared_cluster)
    s.sendall(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n")
    assert read_exactly(s, b"+PONG\r\n") == b"+PONG\r\n"
    s.close()


def test_truncated_request_then_disconnect_leaves_the_proxy_serving(shared_cluster):
    for _ in range(20):
        s = conn(shared_cluster)
        s.sendall(b"*3\r\n$3\r\nSET\r\n$3\r\nabc\r\n$100\r\nonly-a-bit")
        s.close()
    assert shared_cluster.proxy.client().ping()


def test_client_disconnecting_mid_pipeline_does_not_disturb_others(shared_cluster):
    other = shared_cluster.proxy.client()
    for _ in range(5):
        s = conn(shared_cluster)
        s.sendall(b"".join(b"*3\r\n$3\r\nSET\r\n$5\r\nk%04d\r\n$1\r\nv\r\n" % (i % 10000) for i in range(5000)))
        s.close()  # without reading any reply
        pipe = other.pipeline(transaction=False)
        for _ in range(500):
            pipe.incr("mid-pipeline-counter")
        assert pipe.execute()[-1] % 500 == 0
    assert other.get("mid-pipeline-counter") == b"2500"


def test_noauth_is_not_required_without_requirepass(shared_cluster):
    s = conn(shared_cluster)
    s.sendall(b"*2\r\n$4\r\nAUTH\r\n$1\r\nx\r\n")
    got = read_exactly(s, b"-ERR AUTH <password> called without any password configured for the default user. "
                          b"Are you sure your configuration is correct?\r\n")
    assert got.startswith(b"-ERR AUTH <password> called without any password")
    s.close()
