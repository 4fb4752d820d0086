"""RESP3 clients (redis-py 8's default) get what one plain Redis 7.0 would give them, byte for byte."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator

import hiredis
import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvstore_admin.processes import wait_until
from kvstore_proxy import resp
from kvstore_proxy.backend import Backend, Resp3Backend
from kvstore_proxy.datapath import CommandStat, Outbox, Reply, reply_end

from .test_commands import keys_on_every_group
from .test_failures import key_on, kill_g2_mid_pipeline

# --- the reply scanner, without servers -------------------------------------------------------------

REPLIES = [
    b"+OK\r\n", b"-ERR x\r\n", b":-12\r\n", b"$3\r\nabc\r\n", b"$0\r\n\r\n", b"$-1\r\n", b"*-1\r\n", b"*0\r\n",
    b"_\r\n", b",1.5\r\n", b",-inf\r\n", b"#t\r\n", b"(3492890328409238509324850943850943825024385\r\n",
    b"=15\r\ntxt:Some string\r\n", b"!21\r\nSYNTAX invalid syntax\r\n",
    b"%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n*2\r\n:1\r\n_\r\n", b"%0\r\n", b"~2\r\n+a\r\n+b\r\n", b"~0\r\n",
    # maps and sets of bulk strings (HGETALL, SMEMBERS) are bounded in C; a repeated key must not fool it
    b"%2\r\n$1\r\na\r\n$1\r\nb\r\n$2\r\ncc\r\n$0\r\n\r\n", b"%2\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\na\r\n$1\r\nc\r\n",
    b"~3\r\n$1\r\na\r\n$1\r\nb\r\n$4\r\nc\r\nd\r\n", b"*2\r\n$1\r\na\r\n$1\r\nb\r\n",
    b"*3\r\n%1\r\n+a\r\n~1\r\n,inf\r\n|1\r\n+x\r\n+y\r\n#f\r\n_\r\n",
    b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n",
    b"|0\r\n:1\r\n", b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
    # streamed forms (RESP3 spec; Redis 7.0 does not send them)
    b"$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n",
    b"*?\r\n:1\r\n$?\r\n;1\r\na\r\n;0\r\n%?\r\n+a\r\n:1\r\n.\r\n.\r\n",
    b"~?\r\n.\r\n",
]


@pytest.mark.parametrize("reply", REPLIES)
def test_scanner_finds_the_end_of_every_resp3_type(reply: bytes) -> None:
    assert reply_end(reply + b"+NEXT\r\n") == len(reply)
    assert all(reply_end(reply[:n]) == -1 for n in range(len(reply)))


@pytest.mark.parametrize("garbage", [b"?x\r\n", b";3\r\nabc\r\n", b".\r\n", b"$x\r\n", b"|?\r\n", b"%x\r\n"])
def test_scanner_refuses_what_is_not_resp(garbage: bytes) -> None:
    with pytest.raises(resp.ProtocolError):
        reply_end(garbage)


def test_parse_one_reads_blob_errors_and_skips_attributes() -> None:
    assert resp.parse_one(b"*2\r\n$1\r\na\r\n_\r\n") == [b"a", None]
    assert resp.parse_one(b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n") == b"v"
    err = resp.parse_one(b"!21\r\nSYNTAX invalid syntax\r\n")
    assert isinstance(err, hiredis.ReplyError) and str(err) == "SYNTAX invalid syntax"


@pytest.fixture
def twin() -> Iterator[Resp3Backend]:
    loop = asyncio.new_event_loop()
    try:
        backend = Backend("g1", "127.0.0.1:1", Outbox(loop)).resp3
        assert isinstance(backend, Resp3Backend) and backend.state == "idle"
        yield backend
    finally:
        loop.close()


def _pending(backend: Backend, n: int) -> list[Reply]:
    replies = [Reply(None, time.monotonic(), CommandStat("t"), []) for _ in range(n)]
    backend.fifo.extend(replies)
    return replies


def test_resp3_connection_hands_each_request_its_reply_bytes_whatever_the_reads(twin: Resp3Backend) -> None:
    wanted = [r for r in REPLIES if not r.startswith(b">")]
    stream = b"".join(wanted)
    for size in (len(stream), 7, 1):
        got = _pending(twin, len(wanted))
        for i in range(0, len(stream), size):
            twin.data_received(stream[i : i + size])
        assert [bytes(r.data) for r in got] == wanted  # type: ignore[arg-type]
        assert not twin.fifo and twin.buffered == 0


def test_push_messages_answer_no_request_and_are_dropped(twin: Resp3Backend) -> None:
    first, second = _pending(twin, 2)
    twin.data_received(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n$1\r\nv\r\n"
                       b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n%1\r\n$1\r\nf\r\n$1\r\nv\r\n")
    assert first.data == b"$1\r\nv\r\n"
    assert second.data == b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"


# --- redis-py's default client against the proxy and against one plain redis-server -----------------


@pytest.fixture
def r3(shared_cluster) -> Iterator[redis.Redis]:  # type: ignore[no-untyped-def]
    """An unmodified redis-py client of the proxy (protocol left to redis-py: RESP3)."""
    shared_cluster.flush_all()
    client = redis.Redis(port=shared_cluster.proxy.port, socket_timeout=20)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def m3(model_server) -> Iterator[redis.Redis]:  # type: ignore[no-untyped-def]
    """The same client of one plain redis-server."""
    client = redis.Redis(port=model_server.port, socket_timeout=20)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


def test_redis_py_defaults_to_resp3_so_these_tests_mean_something(r3: redis.Redis) -> None:
    hello = r3.execute_command("HELLO")
    assert hello[b"proto"] == 3
    assert b" resp=3" in r3.execute_command("CLIENT", "INFO")


def _everyday(c: redis.Redis, keys: list[bytes]) -> list[object]:
    out: list[object] = []
    add = out.append
    add(c.set("s", "v"))
    add(c.get("s"))
    add(c.get("missing"))
    add(c.hset("h", mapping={"f1": "1", "f2": "2", "f3": ""}))
    add(c.hgetall("h"))
    add(c.hgetall("no-hash"))
    add(c.hget("h", "nope"))
    add(c.hmget("h", ["f1", "nope"]))
    add(c.zadd("z", {"a": 1.5, "b": 2, "c": -0.25}))
    add(c.zscore("z", "a"))
    add(c.zscore("z", "none"))
    add(c.zrange("z", 0, -1, withscores=True))
    add(c.zincrby("z", 0.5, "c"))
    add(c.zpopmin("z"))
    add(c.sadd("set", "x", "y", "z"))
    add(c.smembers("set"))
    add(c.smembers("no-set"))
    add(c.sismember("set", "x"))
    add(c.incrbyfloat("f", 1.25))
    add(c.rpush("l", "1", "2", "3"))
    add(c.lrange("l", 0, -1))
    add(c.lpop("no-list"))
    add(c.mset({k: b"v-" + k for k in keys}))
    add(c.mget([*keys, "missing", keys[0]]))
    add(c.mget("missing", "missing-too"))
    add(c.exists(*keys, "missing"))
    add(c.touch(*keys))
    add(c.delete(*keys[:7], "missing"))
    add(c.unlink(*keys[7:]))
    add(c.expire("s", 100))
    add(c.ttl("s"))
    add(c.type("h"))
    add(c.object("encoding", "z"))
    add(c.dbsize())
    add(sorted(c.keys("s*")))  # KEYS has no order; the proxy lists group by group
    add(c.client_getname())
    add(c.echo("e"))
    add(c.ping())
    add(c.eval("return {1, 'two', redis.call('get', KEYS[1])}", 1, "s"))
    try:
        c.get("h")
    except redis.ResponseError as exc:
        add(("error", str(exc)))
    return out


def test_everyday_commands_get_what_plain_redis_gives(shared_cluster, r3: redis.Redis, m3: redis.Redis) -> None:
    keys = keys_on_every_group(shared_cluster, 4)
    assert _everyday(r3, keys) == _everyday(m3, keys)
    assert r3.hgetall("h") == {b"f1": b"1", b"f2": b"2", b"f3": b""}
    assert r3.zscore("z", "a") == 1.5 and r3.smembers("set") == {b"x", b"y", b"z"}


def _mixed_pipeline(c: redis.Redis) -> list[object]:
    pipe = c.pipeline(transaction=False)
    for i in range(1000):
        k = b"p:%d" % (i % 97)
        step = i % 8
        if step == 0:
            pipe.set(k, i)
        elif step == 1:
            pipe.get(k)
        elif step == 2:
            pipe.hset(b"h:%d" % (i % 13), b"f%d" % i, i)
        elif step == 3:
            pipe.hgetall(b"h:%d" % (i % 13))
        elif step == 4:
            pipe.zadd(b"z:%d" % (i % 5), {b"m%d" % i: i / 3})
        elif step == 5:
            pipe.zscore(b"z:%d" % (i % 5), b"m%d" % (i - 1))
        elif step == 6:
            pipe.mget(k, b"p:%d" % (i % 89), b"nope", b"p:%d" % (i % 7))
        else:
            pipe.sadd(b"s", i % 50)
            pipe.smembers(b"s")
    return pipe.execute()


def test_pipeline_of_1000_mixed_commands_matches_plain_redis(r3: redis.Redis, m3: redis.Redis) -> None:
    assert _mixed_pipeline(r3) == _mixed_pipeline(m3)


def test_scan_iterates_every_key_once(r3: redis.Redis, m3: redis.Redis) -> None:
    for c in (r3, m3):
        pipe = c.pipeline(transaction=False)
        for i in range(2000):
            pipe.set(b"scan:%d" % i, b"1")
        pipe.hset("scan-hash", mapping={f"f{i}": i for i in range(300)})
        pipe.execute()
    seen = list(r3.scan_iter(count=100))
    assert len(seen) == 2001 and set(seen) == set(m3.scan_iter(count=1000))
    assert set(r3.scan_iter(match="scan:1*", count=300)) == set(m3.scan_iter(match="scan:1*"))
    assert list(r3.scan_iter(_type="hash")) == [b"scan-hash"]
    assert dict(r3.hscan_iter("scan-hash", count=50)) == dict(m3.hscan_iter("scan-hash"))


def test_info_and_client_commands_parse_like_redis(r3: redis.Redis, m3: redis.Redis) -> None:
    r3.get("x")
    info = r3.info()
    assert info["redis_version"] == m3.info()["redis_version"] and info["redis_mode"] == "standalone"
    assert info["backend0"]["state"] == "up"
    assert r3.info("commandstats")["cmdstat_get"]["calls"] >= 1
    me = r3.client_info()
    assert me["resp"] == "3" and set(me) <= set(m3.client_info()) | {"lib-name", "lib-ver"}
    assert any(c["id"] == str(me["id"]) and c["resp"] == "3" for c in r3.client_list())
    assert r3.client_getname() is None
    for c in (r3, m3):
        assert c.client_setname("r3") is True
    assert r3.client_getname() == m3.client_getname() == "r3"


def test_hello_reply_has_the_fields_redis_sends(r3: redis.Redis, m3: redis.Redis) -> None:
    mine, theirs = r3.execute_command("HELLO"), m3.execute_command("HELLO")
    assert list(mine) == list(theirs)
    for field in (b"server", b"proto", b"mode", b"role", b"modules"):
        assert mine[field] == theirs[field]
    assert mine[b"id"] == r3.client_id()


def test_proxy_merged_answers_match_redis(shared_cluster, r3: redis.Redis, m3: redis.Redis) -> None:
    for c in (r3, m3):
        assert c.randomkey() is None
        c.set("only", "1")
        assert c.randomkey() == b"only"
        sha = c.script_load("return 1")
        assert c.script_exists(sha, "0" * 40) == [True, False]
        assert c.dbsize() == 1
        secs, usecs = c.time()
        assert secs > 1_600_000_000
    assert r3.execute_command("SLOWLOG", "LEN") >= 0
    assert isinstance(r3.execute_command("SLOWLOG", "GET"), list)
    assert r3.command_count() > 200 and "get" in r3.command()


async def test_asyncio_default_client(shared_cluster) -> None:  # type: ignore[no-untyped-def]
    shared_cluster.flush_all()
    keys = keys_on_every_group(shared_cluster, 3)
    c = redis.asyncio.Redis(port=shared_cluster.proxy.port, socket_timeout=20)
    try:
        assert (await c.execute_command("HELLO"))[b"proto"] == 3
        assert await c.set("a", "1")
        assert await c.get("a") == b"1" and await c.get("none") is None
        await c.hset("h", mapping={"x": "1"})
        assert await c.hgetall("h") == {b"x": b"1"}
        await c.zadd("z", {"m": 2.5})
        assert await c.zscore("z", "m") == 2.5
        await c.mset({k: k for k in keys})
        assert await c.mget([*keys, "none"]) == [*keys, None]
        pipe = c.pipeline(transaction=False)
        for i in range(500):
            pipe.incr("n")
            pipe.mget(keys[i % len(keys)], "none")
        out = await pipe.execute()
        assert out[-2] == 500 and out[-1] == [keys[499 % len(keys)], None]
        got = await asyncio.gather(*(c.get(k) for k in keys))
        assert got == keys
    finally:
        await c.aclose()


# --- the exact bytes, on a raw socket ----------------------------------------------------------------


class Raw:
    """A plain socket speaking RESP; ``call`` returns the reply bytes exactly as sent."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def call(self, *args: bytes | str) -> bytes:
        self.send(args)
        return self.read()

    def send(self, *commands: tuple[bytes | str, ...]) -> None:
        self.sock.sendall(b"".join(hiredis.pack_command(c) for c in commands))

    def read(self) -> bytes:
        """The next reply's bytes."""
        while True:
            if self.buf:
                end = reply_end(self.buf)
                if end >= 0:
                    reply, self.buf = self.buf[:end], self.buf[end:]
                    return reply
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def _hello_bytes(proto: int, cid: int, version: str) -> bytes:
    header = b"%7\r\n" if proto == 3 else b"*14\r\n"
    return (header + b"$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n"
            + resp.bulk(version.encode()) + b"$5\r\nproto\r\n:%d\r\n$2\r\nid\r\n:%d\r\n" % (proto, cid)
            + b"$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n")


@pytest.fixture
def raw(shared_cluster) -> Iterator[Raw]:  # type: ignore[no-untyped-def]
    shared_cluster.flush_all()
    conn = Raw(shared_cluster.proxy.port)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def raw_model(model_server) -> Iterator[Raw]:  # type: ignore[no-untyped-def]
    conn = Raw(model_server.port)
    conn.call("FLUSHALL")
    try:
        yield conn
    finally:
        conn.close()


def test_hello_bytes_and_protocol_switches(raw: Raw) -> None:
    cid = int(raw.call("CLIENT", "ID")[1:-2])
    version = redis.Redis(port=raw.sock.getpeername()[1], protocol=2).info("server")["redis_version"]
    assert raw.call("HELLO", "3") == _hello_bytes(3, cid, version)
    assert raw.call("HELLO") == _hello_bytes(3, cid, version)  # no argument: the current protocol
    assert raw.call("GET", "missing") == b"_\r\n"
    assert raw.call("HELLO", "2") == _hello_bytes(2, cid, version)
    assert raw.call("GET", "missing") == b"$-1\r\n"
    assert raw.call("HELLO", "4") == b"-NOPROTO unsupported protocol version\r\n"
    assert raw.call("GET", "missing") == b"$-1\r\n"  # a refused HELLO changes nothing
    assert raw.call("HELLO", "3", "SETNAME", "named") == _hello_bytes(3, cid, version)
    assert raw.call("CLIENT", "GETNAME") == b"$5\r\nnamed\r\n"
    assert raw.call("RESET") == b"+RESET\r\n"
    assert raw.call("GET", "missing") == b"$-1\r\n"  # RESET goes back to RESP2
    assert raw.call("CLIENT", "GETNAME") == b"$-1\r\n"


@pytest.mark.parametrize("args", [
    ("HELLO", "4"), ("HELLO", "1"), ("HELLO", "-1"), ("HELLO", "x"), ("HELLO", "003"), ("HELLO", " 3"),
    ("HELLO", "3", "FOO"), ("HELLO", "3", "AUTH", "x"), ("HELLO", "3", "SETNAME"),
    ("HELLO", "3", "SETNAME", "a b"), ("HELLO", "3", "AUTH", "bob", "pw"), ("HELLO", "2", "setname", "a", "x"),
    ("AUTH", "default", "any"), ("AUTH", "pw"), ("AUTH", "bob", "pw"),  # no password: default user, any
])
def test_hello_and_auth_refusals_are_redis_errors(raw: Raw, raw_model: Raw, args: tuple[str, ...]) -> None:
    assert raw.call(*args) == raw_model.call(*args)
    assert raw.call("GET", "missing") == raw_model.call("GET", "missing") == b"$-1\r\n"


def test_nulls_and_merges_are_resp3_bytes(shared_cluster, raw: Raw, raw_model: Raw) -> None:
    a, b, c = keys_on_every_group(shared_cluster, 1)
    script = [
        ("SET", a, "1"), ("SET", c, "3"),
        ("MGET", a, b, c), ("MGET", b, b), ("MGET", a, c), ("GET", b), ("HGET", "h", "f"),
        ("CLIENT", "GETNAME"), ("EXISTS", a, b, c), ("DEL", a, b), ("ZADD", "z", "1.5", "m"),
        ("ZSCORE", "z", "m"), ("ZSCORE", "z", "x"), ("ZRANGE", "z", "0", "-1", "WITHSCORES"),
        ("HSET", "h", "f", "v"), ("HGETALL", "h"), ("SADD", "s", "x"), ("SMEMBERS", "s"),
        ("SISMEMBER", "s", "x"), ("LPOP", "nolist"), ("SPOP", "noset"), ("INCRBYFLOAT", "fl", "0.5"),
        ("SCRIPT", "EXISTS", "0" * 40), ("EVAL", "redis.setresp(3); return redis.call('hgetall', KEYS[1])", "1", "h"),
        ("OBJECT", "FREQ", "h"), ("DBSIZE",), ("FLUSHALL",), ("RANDOMKEY",),
    ]
    for conn in (raw, raw_model):
        conn.call("HELLO", "3")
    for args in script:
        assert raw.call(*args) == raw_model.call(*args), args


def test_protocol_switch_in_a_pipeline_keeps_order_and_each_reply_its_protocol(shared_cluster, raw: Raw) -> None:
    """Replies to requests sent before HELLO 3 are RESP2, after it RESP3, in request order."""
    keys = keys_on_every_group(shared_cluster, 2)
    batch = [("MGET", *keys[:3], "none"), *[("GET", k) for k in keys]]
    raw.send(("SET", keys[0], "x"), *batch, ("HELLO", "3"), *batch, ("HELLO", "2"), *batch)
    two = [b"*4\r\n$1\r\nx\r\n$-1\r\n$-1\r\n$-1\r\n", b"$1\r\nx\r\n", *[b"$-1\r\n"] * 5]
    three = [b"*4\r\n$1\r\nx\r\n_\r\n_\r\n_\r\n", b"$1\r\nx\r\n", *[b"_\r\n"] * 5]
    assert raw.read() == b"+OK\r\n"
    assert [raw.read() for _ in batch] == two
    assert raw.read()[:4] == b"%7\r\n"
    assert [raw.read() for _ in batch] == three
    assert raw.read()[:5] == b"*14\r\n"
    assert [raw.read() for _ in batch] == two


def test_info_and_client_text_are_verbatim_strings_in_resp3(raw: Raw) -> None:
    assert raw.call("INFO", "server")[:1] == b"$"
    raw.call("HELLO", "3")
    for args in [("INFO",), ("INFO", "server"), ("CLIENT", "INFO"), ("CLIENT", "LIST")]:
        reply = raw.call(*args)
        head, _, body = reply.partition(b"\r\n")
        assert head[:1] == b"=" and body.startswith(b"txt:") and len(body) == int(head[1:]) + 2, args
    assert b"redis_mode:standalone\r\n" in raw.call("INFO", "server")
    assert b" resp=3" in raw.call("CLIENT", "INFO")


# --- connections, failures, passwords ----------------------------------------------------------------


def test_resp3_connections_open_on_first_use_only(proxy_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = proxy_cluster(2)
    plain = cluster.proxy.client()  # RESP2
    k1 = key_on(0)
    assert plain.set(k1, "1") and plain.get(key_on(1)) is None
    backends = plain.info("backends")
    assert [b["resp3_state"] for b in backends.values()] == ["idle", "idle"]
    g1 = cluster.direct("g1")
    assert [c["resp"] for c in g1.client_list() if c["cmd"] != "client|list"] == ["2"]
    assert redis.Redis(port=cluster.proxy.port).get(k1) == b"1"
    backends = plain.info("backends")
    assert [b["resp3_state"] for b in backends.values()] == ["up", "idle"]
    assert sorted(c["resp"] for c in g1.client_list() if c["cmd"] != "client|list") == ["2", "3"]


def test_backend_killed_with_resp3_requests_pending_answers_errors_at_once(proxy_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = proxy_cluster(3, "--timeout", "5")
    c = redis.Redis(port=cluster.proxy.port, socket_timeout=20)
    k1, k2 = key_on(0), key_on(1)
    c.set(k1, "1")
    c.hset(k2, "f", "2")
    kill_g2_mid_pipeline(cluster, redis.Redis(port=cluster.proxy.port, socket_timeout=20),
                         lambda pipe, k: pipe.hgetall(k))
    with pytest.raises(redis.ResponseError, match="backend g2 .* down"):
        c.hgetall(k2)
    assert c.get(k1) == b"1"
    with pytest.raises(redis.ResponseError, match="g2"):
        c.mget(k1, k2)
    assert c.info("backends")["backend1"]["resp3_state"] == "down"


def test_stalled_backend_times_out_resp3_requests_and_later_replies_line_up(proxy_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = proxy_cluster(2, "--timeout", "0.5")
    c = redis.Redis(port=cluster.proxy.port, socket_timeout=10)
    k1, k2 = key_on(0), key_on(1)
    c.set(k1, "one")
    c.hset(k2, "f", "two")
    node = cluster.nodes["g2"]
    node.signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        pipe = c.pipeline(transaction=False)
        pipe.get(k1)
        pipe.hgetall(k2)
        pipe.get(k1)
        out = pipe.execute(raise_on_error=False)
        assert time.monotonic() - t0 < 3
        assert out[0] == b"one" and out[2] == b"one"
        assert isinstance(out[1], redis.ResponseError) and "timeout" in str(out[1])
    finally:
        node.signal(signal.SIGCONT)
    wait_until(lambda: c.hgetall(k2) == {b"f": b"two"}, 10, "g2 to answer again")
    for i in range(50):
        c.hset(k2, "f", i)
        assert c.hgetall(k2) == {b"f": b"%d" % i}


def test_passwords_on_both_sides_over_resp3(proxy_cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kvstore_admin.processes import start_redis
    from kvstore_cluster.model import Group, Groups
    from kvstore_cluster.store import ClusterStore

    cluster = proxy_cluster(1, start=False)
    locked = start_redis(tmp_path / "locked", password="bpw")
    cluster.extra_procs.append(locked)
    zk = cluster.zk()
    store = ClusterStore(zk, "test")
    store.set_groups(Groups((Group("g1", locked.address),)), store.read_groups().version)
    zk.stop()
    proxy = cluster.start_proxy("--backend-password", "bpw", "--requirepass", "s3cret", password="s3cret")
    # redis-py authenticates with HELLO 3 AUTH default <password>; the proxy's RESP3 connection
    # to the locked backend does the same.
    c = redis.Redis(port=proxy.port, password="s3cret", socket_timeout=20)
    assert c.set("a", "1") and c.get("a") == b"1" and c.hgetall("a-hash") == {}
    assert c.info("backends")["backend0"]["resp3_state"] == "up"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=proxy.port, password="wrong", retry=Retry(NoBackoff(), 0)).ping()
    raw = Raw(proxy.port)
    try:
        assert raw.call("HELLO", "3").startswith(b"-NOAUTH HELLO must be called with the client already authenticated")
        assert raw.call("HELLO", "3", "SETNAME", "n", "AUTH", "default", "wrong") == \
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        assert raw.call("HELLO", "3", "AUTH", "default", "s3cret")[:4] == b"%7\r\n"
        assert raw.call("CLIENT", "GETNAME") == b"$1\r\nn\r\n"  # set before the failed AUTH, as Redis does
        assert raw.call("GET", "a") == b"$1\r\n1\r\n"
    finally:
        raw.close()


def test_resp3_backend_comes_back_after_a_restart(proxy_cluster) -> None:  # type: ignore[no-untyped-def]
    from kvstore_admin.processes import start_redis

    cluster = proxy_cluster(1)
    c = redis.Redis(port=cluster.proxy.port, socket_timeout=10)
    node = cluster.nodes["g1"]
    c.set("a", "1")
    node.signal(signal.SIGKILL)
    wait_until(lambda: not node.alive(), 5, "redis to die")
    with pytest.raises(redis.ResponseError):
        c.get("a")
    revived = start_redis(cluster.base / "revived", port=node.port)
    cluster.extra_procs.append(revived)
    wait_until(lambda: c.set("a", "2") and c.get("a") == b"2", 10, "the proxy to reconnect over RESP3")
    assert c.hgetall("none") == {}
