"""Property: random command sequences get the same replies from the proxy as from one plain redis-server.

Once with RESP2 clients and once with RESP3 clients (redis-py's default): a RESP3 session is
served by each group's RESP3 connection, and the proxy's own merges (MGET nulls, sums) must be
encoded as Redis encodes them in that protocol.
"""

from __future__ import annotations

import socket

import hiredis
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KEYS = [b"a", b"b", b"c", b"{t}a", b"{t}b", b"{t}c", b"n1", b"n2", b"\xff\x00k", b"list", b"hash", b"set"]
key = st.sampled_from(KEYS)
value = st.one_of(st.sampled_from([b"", b"0", b"1", b"-3", b"x", b"10"]), st.binary(max_size=20))
num = st.integers(min_value=-5, max_value=5).map(lambda i: b"%d" % i)

command = st.one_of(
    st.tuples(st.just(b"SET"), key, value),
    st.tuples(st.just(b"GET"), key),
    st.tuples(st.just(b"APPEND"), key, value),
    st.tuples(st.just(b"INCR"), key),
    st.tuples(st.just(b"INCRBY"), key, num),
    st.tuples(st.just(b"DECR"), key),
    st.tuples(st.just(b"STRLEN"), key),
    st.tuples(st.just(b"GETRANGE"), key, num, num),
    st.tuples(st.just(b"LPUSH"), key, value),
    st.tuples(st.just(b"RPUSH"), key, value, value),
    st.tuples(st.just(b"LPOP"), key),
    st.tuples(st.just(b"LRANGE"), key, num, num),
    st.tuples(st.just(b"LLEN"), key),
    st.tuples(st.just(b"HSET"), key, value, value),
    st.tuples(st.just(b"HGET"), key, value),
    st.tuples(st.just(b"HGETALL"), key),
    st.tuples(st.just(b"HINCRBY"), key, value, num),
    st.tuples(st.just(b"SADD"), key, value),
    st.tuples(st.just(b"SISMEMBER"), key, value),
    st.tuples(st.just(b"SCARD"), key),
    st.tuples(st.just(b"SMEMBERS"), key),
    st.tuples(st.just(b"ZADD"), key, num, value),
    st.tuples(st.just(b"ZSCORE"), key, value),
    st.tuples(st.just(b"ZINCRBY"), key, num, value),
    st.tuples(st.just(b"ZRANGE"), key, num, num, st.just(b"WITHSCORES")),
    st.tuples(st.just(b"INCRBYFLOAT"), key, st.sampled_from([b"1.5", b"-0.25", b"1e3"])),
    st.tuples(st.just(b"HKEYS"), key),
    st.tuples(st.just(b"TYPE"), key),
    st.tuples(st.just(b"EXISTS"), key),
    st.builds(lambda ks: (b"MGET", *ks), st.lists(key, min_size=1, max_size=6)),
    st.builds(lambda kvs: (b"MSET", *[x for kv in kvs for x in kv]),
              st.lists(st.tuples(key, value), min_size=1, max_size=4)),
    st.builds(lambda ks: (b"DEL", *ks), st.lists(key, min_size=1, max_size=5)),
    st.builds(lambda ks: (b"EXISTS", *ks), st.lists(key, min_size=1, max_size=5)),
    st.builds(lambda ks: (b"UNLINK", *ks), st.lists(key, min_size=1, max_size=3)),
    st.builds(lambda ks: (b"TOUCH", *ks), st.lists(key, min_size=1, max_size=3)),
    st.tuples(st.just(b"RENAME"), st.sampled_from([b"{t}a", b"{t}b"]), st.sampled_from([b"{t}c", b"{t}a"])),
    st.tuples(st.just(b"SINTERSTORE"), st.just(b"{t}c"), st.sampled_from([b"{t}a", b"{t}b"])),
    st.tuples(st.just(b"DBSIZE")),
    st.tuples(st.just(b"PING")),
    st.tuples(st.just(b"ECHO"), value),
)


def run(client: redis.Redis, commands: list[tuple[bytes, ...]]) -> list[object]:
    pipe = client.pipeline(transaction=False)
    for c in commands:
        pipe.execute_command(*c)
    out = pipe.execute(raise_on_error=False)
    return [("error", str(r)) if isinstance(r, redis.ResponseError) else r for r in out]


def run_raw(port: int, protocol: int, commands: list[tuple[bytes, ...]]) -> bytes:
    """The reply bytes exactly as sent, for a pipeline after ``HELLO <protocol>`` (its reply left out)."""
    reader = hiredis.Reader()
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(hiredis.pack_command((b"HELLO", b"%d" % protocol)))
        while reader.gets() is False:
            reader.feed(s.recv(65536))
        s.sendall(b"".join(hiredis.pack_command(c) for c in commands))
        got = 0
        while got < len(commands):
            chunk = s.recv(65536)
            assert chunk, "connection closed"
            out += chunk
            reader.feed(chunk)
            while reader.gets() is not False:
                got += 1
    return out


@pytest.mark.parametrize("protocol", [2, 3])
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(commands=st.lists(command, min_size=1, max_size=40))
def test_proxy_answers_like_a_single_redis_server(shared_cluster, model_server, protocol, commands):
    proxy = shared_cluster.proxy.client(protocol=protocol)
    model = redis.Redis(port=model_server.port, protocol=protocol)
    try:
        proxy.flushall()
        model.flushall()
        assert run(proxy, commands) == run(model, commands)
        # Byte for byte too: redis-py reads $-1 and _ alike, a RESP3 client library may not.
        proxy.flushall()
        model.flushall()
        assert run_raw(shared_cluster.proxy.port, protocol, commands) == run_raw(model_server.port, protocol, commands)
    finally:
        proxy.close()
        model.close()
