"""The compiled request path end to end without sockets: a Worker's sessions and backends on fake transports.

Requests reach the session cut anywhere; backends (small in-memory Redis stand-ins, one keyspace
each) answer in any order and their replies are cut anywhere too. The client must get exactly what
one Redis would answer, in request order: routing by slot, MGET/MSET/DEL split and merged, the slow
path (PING, ECHO, unknown commands), inline commands, protocol errors.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import hiredis
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore_cluster import keymove
from kvstore_cluster.model import Group, Groups, Migration, SlotTable, even_split
from kvstore_proxy import commands
from kvstore_proxy.config import ProxyConfig
from kvstore_proxy.datapath import LATENCY_BUCKETS, latency_bucket_of
from kvstore_proxy.latency import PERCENTILES, Histograms
from kvstore_proxy.server import Worker
from kvstore_proxy.session import Session


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.out += data

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else None

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class FakeRedis:
    """The replies one Redis would give for the commands of this test (RESP2); ``servers`` (by
    port) are where the take script (kvstore_cluster/keymove.py) moves keys."""

    def __init__(self, servers: dict[int, FakeRedis] | None = None) -> None:
        self.data: dict[bytes, bytes] = {}
        self.servers = servers if servers is not None else {}

    def call(self, args: list[bytes]) -> bytes:
        name, rest = args[0].upper(), args[1:]
        d = self.data
        if name == b"EVALSHA" and rest[0] == keymove.TAKE_SHA:  # the take: MIGRATE keys... to host port
            n = int(rest[1])
            target = self.servers[int(rest[3 + n])].data
            keys = [k for k in rest[2: 2 + n] if k in d]
            if any(k in target for k in keys):
                return b"-ERR Target instance replied with error: BUSYKEY Target key name already exists.\r\n"
            for k in keys:
                target[k] = d.pop(k)
            return b"+OK\r\n"
        if name == b"GET":
            return _bulk(d.get(rest[0]))
        if name == b"SET":
            d[rest[0]] = rest[1]
            return b"+OK\r\n"
        if name == b"INCR":
            try:
                n = int(d.get(rest[0], b"0")) + 1
            except ValueError:
                return b"-ERR value is not an integer or out of range\r\n"
            d[rest[0]] = b"%d" % n
            return b":%d\r\n" % n
        if name == b"MGET":
            return b"*%d\r\n" % len(rest) + b"".join(_bulk(d.get(k)) for k in rest)
        if name == b"MSET":
            for i in range(0, len(rest), 2):
                d[rest[i]] = rest[i + 1]
            return b"+OK\r\n"
        if name in (b"DEL", b"UNLINK"):
            return b":%d\r\n" % sum(d.pop(k, None) is not None for k in rest)
        if name == b"EXISTS":
            return b":%d\r\n" % sum(k in d for k in rest)
        if name == b"PING":
            return b"+PONG\r\n"
        if name == b"ECHO":
            return _bulk(rest[0])
        return b"-" + commands.unknown_command_error(args) + b"\r\n"


def _bulk(v: bytes | None) -> bytes:
    return b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v)


class Server:
    """A fake backend: what the proxy wrote to it, answered by a FakeRedis."""

    def __init__(self, backend: Any, servers: dict[int, FakeRedis]) -> None:
        self.backend = backend
        self.transport = FakeTransport()
        self.redis = servers[backend.port] = FakeRedis(servers)
        self.reader = hiredis.Reader()
        self.replies = b""
        backend._connect_task.cancel()
        backend.connection_made(self.transport)

    def answer(self) -> None:
        self.reader.feed(bytes(self.transport.out))
        self.transport.out.clear()
        while (args := self.reader.gets()) is not False:
            self.replies += self.redis.call(args)


KEYS = [b"a", b"b", b"c", b"{t}a", b"{t}b", b"k1", b"k2", b"k3", b"\xffx"]
key = st.sampled_from(KEYS)
value = st.sampled_from([b"", b"1", b"x", b"10", b"\r\n*3\r\n"])
command = st.one_of(
    st.tuples(st.sampled_from([b"GET", b"get"]), key),
    st.tuples(st.sampled_from([b"SET", b"set"]), key, value),
    st.tuples(st.just(b"INCR"), key),
    st.builds(lambda ks: (b"MGET", *ks), st.lists(key, min_size=1, max_size=6)),
    st.builds(lambda kvs: (b"MSET", *[x for kv in kvs for x in kv]), st.lists(st.tuples(key, value), min_size=1,
                                                                                max_size=4)),
    st.builds(lambda ks: (b"DEL", *ks), st.lists(key, min_size=1, max_size=4)),
    st.builds(lambda ks: (b"EXISTS", *ks), st.lists(key, min_size=1, max_size=4)),
    st.tuples(st.just(b"PING")),
    st.tuples(st.just(b"ECHO"), value),
    st.tuples(st.just(b"NOPE"), key),
    st.tuples(st.just(b"MSET"), key),  # arity error, from the slow path
)


def _worker(loop: asyncio.AbstractEventLoop, groups: int = 3, migrating: bool = False,
            config: ProxyConfig | None = None) -> tuple[Worker, list[Server]]:
    """``migrating``: g1's slots are moving to g2 (every key of g1 is taken to g2 before it is used)."""
    worker = Worker(config or ProxyConfig(), loop)
    worker.listening = True
    ids = [f"g{i}" for i in range(1, groups + 1)]
    model = Groups(tuple(Group(g, f"127.0.0.1:{10000 + i}") for i, g in enumerate(ids)))
    ranges = tuple(even_split(ids))
    moves = (Migration(ranges[0][0], ranges[0][1], "g1", "g2"),) if migrating else ()
    worker.router.apply(model, 1, SlotTable(ranges, moves), 1)
    servers: dict[int, FakeRedis] = {}
    return worker, [Server(worker.router.backends[g], servers) for g in ids]


def _session(worker: Worker) -> tuple[Session, FakeTransport]:
    s = Session(worker)
    t = FakeTransport()
    s.connection_made(t)
    return s, t


def _replies(raw: bytes) -> list[Any]:
    reader = hiredis.Reader()
    reader.feed(raw)
    out = []
    while (r := reader.gets()) is not False:
        out.append(r)
    return out


async def _run(cmds: list[tuple[bytes, ...]], data: st.DataObject, inline: bool,
               migrating: bool = False) -> tuple[bytes, bytes]:
    worker, servers = _worker(asyncio.get_running_loop(), migrating=migrating)
    session, client = _session(worker)
    if inline:
        stream = b"".join(b" ".join(c) + b"\r\n" for c in cmds)
    else:
        stream = b"".join(hiredis.pack_command(c) for c in cmds)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="request cuts")))
    at = 0
    for cut in [*cuts, len(stream)]:
        if cut > at:
            session.data_received(stream[at:cut])
            at = cut
        if data.draw(st.booleans(), label="serve now"):
            await _serve(worker, servers, data)
    for _ in range(6):  # a merged reply can need a round per group, a migrating key one more
        await _serve(worker, servers, data)
    model = FakeRedis()
    return bytes(client.out), b"".join(_expected(model, list(c)) for c in cmds)


def _expected(model: FakeRedis, args: list[bytes]) -> bytes:
    spec = commands.lookup(args)
    if spec is not None and not commands.check_arity(spec, len(args)):
        return b"-" + commands.arity_error(spec) + b"\r\n"
    return model.call(args)


async def _serve(worker: Worker, servers: list[Server], data: st.DataObject) -> None:
    worker.outbox.run()
    for server in data.draw(st.permutations(servers), label="answer order"):
        server.answer()
        replies, server.replies = server.replies, b""
        cuts = sorted(set(data.draw(st.lists(st.integers(0, len(replies)), max_size=4), label="reply cuts")))
        at = 0
        for cut in [*cuts, len(replies)]:
            if cut > at:
                server.backend.data_received(replies[at:cut])
                at = cut
    worker.outbox.run()


@settings(max_examples=300, deadline=None)
@given(st.lists(command, min_size=1, max_size=30), st.data())
def test_replies_are_one_redis_s_in_request_order(cmds: list[tuple[bytes, ...]], data: st.DataObject) -> None:
    got, expected = asyncio.run(_run(cmds, data, inline=False))
    assert got == expected  # byte for byte


@settings(max_examples=100, deadline=None)
@given(st.lists(command, min_size=1, max_size=20), st.data())
def test_keys_of_migrating_slots_move_first_single_and_split_requests_alike(
        cmds: list[tuple[bytes, ...]], data: st.DataObject) -> None:
    got, expected = asyncio.run(_run(cmds, data, inline=False, migrating=True))
    assert got == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(command.filter(lambda c: all(b" " not in a and b"\r" not in a and b"\n" not in a and a
                                             and b'"' not in a and b"'" not in a for a in c)),
                min_size=1, max_size=10), st.data())
def test_inline_commands_take_the_same_path(cmds: list[tuple[bytes, ...]], data: st.DataObject) -> None:
    got, expected = asyncio.run(_run(cmds, data, inline=True))
    assert got == expected


def _answer_all(worker: Worker, servers: list[Server]) -> None:
    worker.outbox.run()
    for server in servers:
        server.answer()
        replies, server.replies = server.replies, b""
        if replies:
            server.backend.data_received(replies)
    worker.outbox.run()


async def _one(stream: bytes, groups: int = 3,
               config: ProxyConfig | None = None) -> tuple[Session, FakeTransport, Worker, list[Server]]:
    worker, servers = _worker(asyncio.get_running_loop(), groups, config=config)
    session, client = _session(worker)
    session.data_received(stream)
    for _ in range(3):
        _answer_all(worker, servers)
    return session, client, worker, servers


def test_a_protocol_error_answers_what_came_before_then_closes() -> None:
    async def go() -> None:
        _, client, _, _ = await _one(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n:5\r\n")
        assert client.out == b"$-1\r\n+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n"
        assert client.closed

    asyncio.run(go())


def test_quit_is_answered_then_the_connection_closes_and_nothing_after_it_runs() -> None:
    async def go() -> None:
        for stream in (b"NOSUCH\r\nQUIT\r\nSET after 1\r\n",
                       hiredis.pack_command((b"GET", b"a")) + hiredis.pack_command((b"QUIT",))
                       + hiredis.pack_command((b"SET", b"after", b"1"))):
            _, client, _, servers = await _one(stream)
            assert client.out.endswith(b"+OK\r\n") and client.closed
            assert client.out.startswith(b"-ERR unknown command 'NOSUCH'" if stream[0] == 78 else b"$-1\r\n")
            assert not any(b"after" in s.redis.data for s in servers)

    asyncio.run(go())


def test_a_split_request_counts_once_in_commandstats() -> None:
    async def go() -> None:
        keys = [b"k%d" % i for i in range(20)]
        _, client, worker, _ = await _one(hiredis.pack_command((b"MSET", *[x for k in keys for x in (k, b"v")]))
                                       + hiredis.pack_command((b"MGET", *keys)) * 2)
        assert _replies(bytes(client.out)) == [b"OK", [b"v"] * 20, [b"v"] * 20]
        assert worker.commandstats["mget"].calls == 2 and worker.commandstats["mset"].calls == 1

    asyncio.run(go())


def test_latency_histograms_count_every_reply_once() -> None:
    async def go() -> None:
        stream = b"".join(hiredis.pack_command(c) for c in (
            (b"SET", b"a", b"1"), (b"GET", b"a"), (b"MGET", *KEYS), (b"MSET", b"k1", b"1", b"k2", b"2"),
            (b"PING",), (b"NOPE",), (b"GET",), (b"INCR", b"a"), (b"DEL", *KEYS))) * 7
        _, _, worker, _ = await _one(stream)
        stats = {name: stat for name, stat in worker.commandstats.items() if stat.calls}
        assert {"set", "get", "mget", "mset", "ping", "incr", "del", "(unknown)"} <= set(stats)
        for stat in stats.values():
            assert sum(stat.histogram().values()) == stat.calls, stat.name

        _, _, worker, _ = await _one(stream, config=ProxyConfig(latency_tracking=False))
        assert worker.commandstats["get"].calls == 14
        assert all(stat.histogram() == {} for stat in worker.commandstats.values())

    asyncio.run(go())


def test_latency_percentiles_fall_in_the_bucket_of_the_latency_served() -> None:
    """Replies held back for known times: each percentile is the bucket of the latency of its rank."""

    async def go() -> None:
        worker, servers = _worker(asyncio.get_running_loop())
        session, client = _session(worker)
        held = [0.0] * 40 + [0.003] * 50 + [0.03] * 10  # p50: a 3 ms one; p99 and p99.9: 30 ms ones
        windows = []
        for delay in held:
            start = time.monotonic()
            session.data_received(hiredis.pack_command((b"GET", b"a")))
            worker.outbox.run()
            time.sleep(delay)
            _answer_all(worker, servers)
            windows.append(time.monotonic() - start)  # the request's arrival and reply are inside
        assert _replies(bytes(client.out)) == [None] * len(held)
        hist = Histograms.merge([Histograms.of(worker.commandstats.values())])
        assert hist.cumulative("get")[0] == len(held) == worker.commandstats["get"].calls
        for p, got in zip(PERCENTILES, hist.percentiles("get"), strict=True):
            rank = math.ceil(p * len(held) / 100)
            # the latency of that rank lies between the rank-th hold and the rank-th window
            fastest, slowest = sorted(held)[rank - 1], sorted(windows)[rank - 1]
            lowest = LATENCY_BUCKETS[latency_bucket_of(fastest)]
            highest = LATENCY_BUCKETS[latency_bucket_of(slowest)]
            assert lowest <= got <= highest, (p, got, fastest, slowest)
            assert got > fastest * 1e6

    asyncio.run(go())
