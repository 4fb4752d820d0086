"""Every class of the command table through the proxy to a 3-group cluster, with redis-py."""

from __future__ import annotations

import os

import pytest
import redis

from kvstore_cluster.slots import key_slot
from kvstore_proxy import commands
from kvstore_proxy.commands import Kind


def keys_on_every_group(cluster, n: int = 30) -> list[bytes]:  # type: ignore[no-untyped-def]
    """``n`` keys per group, interleaved, so any request mixing them spans all groups."""
    per: dict[str, list[bytes]] = {gid: [] for gid in cluster.nodes}
    bounds = [(0, 5461, "g1"), (5462, 10922, "g2"), (10923, 16383, "g3")]
    i = 0
    while any(len(v) < n for v in per.values()):
        k = b"key:%d" % i
        s = key_slot(k)
        gid = next(g for lo, hi, g in bounds if lo <= s <= hi)
        if len(per[gid]) < n:
            per[gid].append(k)
        i += 1
    return [k for trio in zip(*per.values(), strict=True) for k in trio]


def test_keyed_commands_land_on_the_group_owning_the_slot(shared_cluster, pc):
    keys = keys_on_every_group(shared_cluster, 5)
    for k in keys:
        assert pc.set(k, b"v-" + k)
    for k in keys:
        assert pc.get(k) == b"v-" + k
    # each key is stored, unchanged, on exactly one group
    found = {gid: set(shared_cluster.direct(gid).keys()) for gid in shared_cluster.nodes}
    for k in keys:
        assert sum(k in ks for ks in found.values()) == 1
    assert all(found.values())


def test_data_types_through_the_proxy(pc):
    assert pc.incr("counter") == 1
    assert pc.incrby("counter", 41) == 42
    assert pc.rpush("list", "a", "b", "c") == 3
    assert pc.lrange("list", 0, -1) == [b"a", b"b", b"c"]
    assert pc.hset("hash", mapping={"f1": "1", "f2": "2"}) == 2
    assert pc.hgetall("hash") == {b"f1": b"1", b"f2": b"2"}
    assert pc.sadd("set", "x", "y") == 2
    assert pc.smembers("set") == {b"x", b"y"}
    assert pc.zadd("zset", {"a": 1, "b": 2}) == 2
    assert pc.zrange("zset", 0, -1, withscores=True) == [(b"a", 1.0), (b"b", 2.0)]
    assert pc.type("list") == b"list"
    assert pc.expire("counter", 100) is True
    assert 0 < pc.ttl("counter") <= 100
    assert pc.object("encoding", "list") in (b"listpack", b"quicklist")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        pc.get("list")


def test_mget_across_three_groups_returns_values_in_request_order(shared_cluster, pc):
    keys = keys_on_every_group(shared_cluster, 10)
    pc.mset({k: b"val-" + k for k in keys})
    ask = [*keys, b"missing", keys[0]]
    assert pc.mget(ask) == [b"val-" + k for k in keys] + [None, b"val-" + keys[0]]
    assert pc.exists(*keys, "missing") == len(keys)
    assert pc.touch(*keys) == len(keys)
    assert pc.delete(*keys[:10], "missing") == 10
    assert pc.unlink(*keys[10:]) == len(keys) - 10
    assert pc.dbsize() == 0


def test_mset_split_over_groups_sets_every_key(shared_cluster, pc):
    keys = keys_on_every_group(shared_cluster, 4)
    assert pc.execute_command("MSET", *[x for k in keys for x in (k, k + b"!")]) is True
    assert pc.mget(keys) == [k + b"!" for k in keys]
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        pc.execute_command("MSET", "a", "1", "b")


def test_same_slot_commands_need_one_slot(pc):
    pc.sadd("{u1}a", "x", "y")
    pc.sadd("{u1}b", "y", "z")
    assert pc.sinterstore("{u1}c", ["{u1}a", "{u1}b"]) == 1
    assert pc.smembers("{u1}c") == {b"y"}
    assert pc.rename("{u1}c", "{u1}d") is True
    with pytest.raises(redis.ResponseError, match="^Keys in request don't hash to the same slot"):
        pc.sinterstore("c", ["a", "b"])
    with pytest.raises(redis.ResponseError, match="CROSSSLOT|same slot"):
        pc.rename("{u1}d", "elsewhere")
    assert pc.msetnx({"{t}1": "a", "{t}2": "b"}) is True
    assert pc.eval("return redis.call('get', KEYS[1])", 1, "{t}1") == b"a"
    assert pc.eval("return 7", 0) == 7
    with pytest.raises(redis.ResponseError, match="same slot"):
        pc.eval("return 1", 2, "x1", "x2")


def test_refused_and_unknown_commands_keep_the_connection(pc):
    with pytest.raises(redis.ResponseError, match="WAIT is not supported"):
        pc.execute_command("WAIT", "0", "0")
    with pytest.raises(redis.ResponseError, match="SAVE is not supported"):
        pc.execute_command("SAVE")
    with pytest.raises(redis.ResponseError,
                       match=r"^unknown command 'frobnicate', with args beginning with: 'a' 'b' $"):
        pc.execute_command("frobnicate", "a", "b")
    with pytest.raises(redis.ResponseError, match=r"^wrong number of arguments for 'get' command$"):
        pc.execute_command("GET")
    assert pc.ping()


def test_every_kind_of_the_table_gets_an_answer(pc):
    """One command of each kind; none hangs and none closes the connection."""
    seen = set()
    samples = {Kind.KEYED: ["GET", "k"], Kind.MULTI: ["EXISTS", "a", "b"],
               Kind.SAME_SLOT: ["SUNION", "{a}1", "{a}2"], Kind.PROXY: ["DBSIZE"],
               Kind.REFUSED: ["WAIT", "0", "0"], Kind.BLOCKING: ["BLPOP", "q", "0.01"],
               Kind.TRANSACTION: ["UNWATCH"], Kind.PUBSUB: ["PUBLISH", "ch", "m"]}
    for spec in commands.all_specs():
        seen.add(spec.kind)
    assert seen == set(samples)
    for kind, argv in samples.items():
        try:
            pc.execute_command(*argv)
        except redis.ResponseError as exc:
            assert kind is Kind.REFUSED, exc
    assert pc.ping()


def test_proxy_answered_commands(shared_cluster, pc):
    assert pc.echo("hi") == b"hi"
    assert pc.execute_command("SELECT", "0") in (True, b"OK")
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        pc.execute_command("SELECT", "1")
    assert pc.client_setname("tester") is True
    assert pc.client_getname() == "tester" or pc.client_getname() == b"tester"
    cid = pc.client_id()
    assert isinstance(cid, int) and cid > 0
    assert any(c["name"] == "tester" for c in pc.client_list())
    assert b"name=tester" in pc.execute_command("CLIENT", "INFO")
    hello = pc.execute_command("HELLO", "2")
    assert hello[hello.index(b"proto") + 1] == 2
    with pytest.raises(redis.ResponseError, match="^NOPROTO unsupported protocol version$"):
        pc.execute_command("HELLO", "4")  # HELLO 3 is served: test_resp3.py
    secs, usecs = pc.time()
    assert secs > 1_600_000_000 and 0 <= usecs < 1_000_000
    assert pc.command_count() > 200
    assert "get" in pc.command()
    pc.set("a", 1)
    pc.set("b", 2)
    assert pc.dbsize() == 2
    assert sorted(pc.keys("*")) == [b"a", b"b"]
    assert pc.randomkey() in (b"a", b"b")
    sha = pc.script_load("return 1")
    assert pc.script_exists(sha, "0" * 40) == [True, False]
    assert pc.evalsha(sha, 0) == 1
    for gid in shared_cluster.nodes:
        assert shared_cluster.direct(gid).script_exists(sha) == [True]
    assert pc.script_flush() is True
    assert pc.script_exists(sha) == [False]
    assert pc.flushall() is True
    assert pc.dbsize() == 0


def test_info_has_proxy_sections(pc):
    pc.get("x")
    info = pc.info("everything")
    assert info["redis_version"]
    assert info["connected_clients"] >= 1
    assert "cmdstat_get" in info and info["cmdstat_get"]["calls"] >= 1
    assert info["slots_version"] == 0 and info["groups_version"] == 0 and info["fenced"] == 0
    assert info["backend0"]["state"] == "up"


def test_slowlog_records_the_proxys_slow_requests(shared_cluster, pc):
    pc.execute_command("SLOWLOG", "RESET")
    assert pc.execute_command("SLOWLOG", "LEN") == 0
    # DEBUG is refused, so make a request slow by hand: a Lua busy loop on a backend.
    pc.eval("local t = redis.call('time'); local s = t[1] * 1e6 + t[2]; "
            "while true do local n = redis.call('time'); if n[1]*1e6+n[2] - s > 30000 then break end end; "
            "return 1", 1, "slowkey")
    assert pc.execute_command("SLOWLOG", "LEN") >= 1
    entry = pc.execute_command("SLOWLOG", "GET", "1")[0]
    assert entry[3][0] == b"EVAL" and entry[2] >= 30000


def test_scan_iterates_every_key_exactly_once_across_groups(shared_cluster, pc):
    keys = {b"scan:%d" % i for i in range(3000)}
    pipe = pc.pipeline(transaction=False)
    for k in keys:
        pipe.set(k, b"1")
    pipe.execute()
    seen: list[bytes] = []
    cursor = 0
    while True:
        cursor, batch = pc.scan(cursor, count=200)
        seen.extend(batch)
        if cursor == 0:
            break
    assert len(seen) == len(keys) and set(seen) == keys
    assert set(pc.scan_iter(match="scan:1*", count=500)) == {k for k in keys if k.startswith(b"scan:1")}
    pc.rpush("scan:list", "x")
    assert list(pc.scan_iter(_type="list")) == [b"scan:list"]


def test_pipeline_of_10000_commands_mixed_across_groups(pc):
    pipe = pc.pipeline(transaction=False)
    for i in range(10_000):
        if i % 4 == 0:
            pipe.set(b"p:%d" % i, b"%d" % i)
        elif i % 4 == 1:
            pipe.get(b"p:%d" % (i - 1))
        elif i % 4 == 2:
            pipe.incr(b"c:%d" % (i % 7))
        else:
            pipe.mget(b"p:%d" % (i - 3), b"p:%d" % (i - 7), b"nope")
    out = pipe.execute()
    counters: dict[int, int] = {}
    for i, got in enumerate(out):
        if i % 4 == 0:
            assert got is True
        elif i % 4 == 1:
            assert got == b"%d" % (i - 1)
        elif i % 4 == 2:
            counters[i % 7] = counters.get(i % 7, 0) + 1
            assert got == counters[i % 7]
        else:
            assert got == [b"%d" % (i - 3), b"%d" % (i - 7) if i >= 7 else None, None]


def test_binary_keys_and_values(pc):
    key = bytes(range(256))
    value = os.urandom(4096) + b"\r\n$5\r\n*1\r\n"
    assert pc.set(key, value)
    assert pc.get(key) == value
    assert pc.mget([key, b"\x00", b"{\xff}"]) == [value, None, None]
    assert pc.set(b"", b"")
    assert pc.get(b"") == b""


def test_values_of_8_mib_and_more(pc):
    big = os.urandom(9 * 1024 * 1024)
    assert pc.set("big", big)
    assert pc.get("big") == big
    assert pc.strlen("big") == len(big)
    pc.set("big2", big[:8 * 1024 * 1024])
    assert pc.mget("big", "big2", "none") == [big, big[:8 * 1024 * 1024], None]
