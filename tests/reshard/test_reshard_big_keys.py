"""Big keys move in pieces: written to meanwhile (nothing lost, never seen half-moved), killed part-way and resumed."""

from __future__ import annotations

import json
import threading
import time

import redis
from reshard_helpers import keys_in_slots
from test_reshard_through_proxies import Proxy

from kvstore_cluster import keymove
from kvstore_cluster.ops.context import CRASH_HOOK_ENV, CRASH_HOOK_EXIT
from kvstore_cluster.slots import key_slot

N = 20_000  # elements per big key: far above --big-key-bytes below, quick to build
BIG = "65536"


def _build(a: redis.Redis, tag: str) -> dict[str, bytes]:
    """One big key of each type with the hash tag ``tag``, each with a TTL; returns name by type."""
    names = {t: f"{t}:{{{tag}}}".encode() for t in ("hash", "list", "zset", "set", "string", "stream")}
    pipe = a.pipeline(transaction=False)
    for i in range(0, N, 1000):
        r = range(i, i + 1000)
        pipe.hset(names["hash"], mapping={b"f%d" % j: b"v%d" % j for j in r})
        pipe.rpush(names["list"], *[b"e%d" % j for j in r])
        pipe.zadd(names["zset"], {b"m%d" % j: j / 7 for j in r})
        pipe.sadd(names["set"], *[b"s%d" % j for j in r])
    for j in range(6000):
        pipe.xadd(names["stream"], {b"n": j})
    pipe.set(names["string"], b"x" * 300_000)
    for name in names.values():
        pipe.expire(name, 1000)
    pipe.execute()
    a.xgroup_create(names["stream"], "readers", id="0")
    return names


def _contents(node: redis.Redis, names: dict[str, bytes]) -> dict[str, object]:
    return {
        "hash": node.hgetall(names["hash"]), "list": node.lrange(names["list"], 0, -1),
        "zset": node.zrange(names["zset"], 0, -1, withscores=True), "set": node.smembers(names["set"]),
        "string": node.get(names["string"]), "stream": node.xrange(names["stream"]),
        "groups": [g["name"] for g in node.xinfo_groups(names["stream"])],
    }


def test_big_keys_of_every_type_move_in_pieces_while_a_client_writes_to_one(cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    a, b = c.master("g1"), c.master("g2")
    names = _build(a, "big")
    slot = key_slot(names["hash"])
    assert c.owners()[slot] == "g1"
    small = keys_in_slots(slot, slot, 50, "{big}:small")
    for k in small:
        a.set(k, b"small")
    before = _contents(a, names)
    proxy = Proxy(c.zk_hosts, c.tc.name, tmp_path / "proxy.log")
    stop = threading.Event()
    acked: list[int] = []
    problems: list[str] = []

    def writer() -> None:
        client, n = proxy.client(), 0
        while not stop.is_set():
            n += 1
            try:
                client.hset(names["hash"], b"w%d" % n, n)
                acked.append(n)
            except redis.exceptions.TryAgainError:
                pass  # not executed: held past its bound while the key moved (allowed, never lost)
            except Exception as exc:  # noqa: BLE001 - reported by the test
                problems.append(f"HSET: {exc}")
                return

    def reader() -> None:
        client = proxy.client()
        while not stop.is_set():
            try:
                size = client.hlen(names["hash"])
                if size < N:
                    problems.append(f"HLEN {size}: the hash was seen half-moved")
                    return
            except redis.exceptions.TryAgainError:
                pass
            except Exception as exc:  # noqa: BLE001 - reported by the test
                problems.append(f"HLEN: {exc}")
                return

    threads = [threading.Thread(target=writer, daemon=True), threading.Thread(target=reader, daemon=True)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)
        result = c.admin("reshard", "--slots", str(slot), "--to", "g2", "--big-key-bytes", BIG, "--json")
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        proxy.stop()
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert not problems, problems[:5]
    assert out["big_keys_moved"] == 6 and out["keys_moved"] == 6 + len(small)
    assert acked, "the writer never got a reply"
    after = _contents(b, names)
    written = {b"w%d" % n: str(n).encode() for n in acked}
    assert after["hash"] == {**before["hash"], **written}  # type: ignore[dict-item]
    for kind in ("list", "zset", "set", "string", "stream", "groups"):
        assert after[kind] == before[kind], kind
    assert all(0 < b.ttl(name) <= 1000 for name in names.values())
    assert not any(a.exists(name) for name in names.values()) and a.dbsize() == 0
    assert not a.eval(keymove.LOCKED, 0)
    b.execute_command("SELECT", keymove.COPY_DB)
    assert b.dbsize() == 0  # no copy left behind
    b.execute_command("SELECT", 0)
    c.check_ok()


def test_a_move_killed_with_a_big_key_half_copied_resumes_it(cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    a, b = c.master("g1"), c.master("g2")
    names = _build(a, "resume")
    slot = key_slot(names["hash"])
    before = _contents(a, names)
    args = ("reshard", "--slots", str(slot), "--to", "g2", "--big-key-bytes", BIG)
    crashed = c.admin_process(*args, env={CRASH_HOOK_ENV: "piece"})
    assert crashed.returncode == CRASH_HOOK_EXIT, crashed.stderr
    locked = a.eval(keymove.LOCKED, 0)
    assert len(locked) == 1 and a.exists(locked[0]) and not b.exists(locked[0])  # in flight: still on the source
    proxy = Proxy(c.zk_hosts, c.tc.name, tmp_path / "proxy.log")
    try:
        client = proxy.client()
        try:
            client.hset(names["hash"], b"during", b"held")
            written = names["hash"] not in locked  # another key was the one in flight
        except redis.exceptions.TryAgainError:
            written = False  # held past its bound: not executed
        resumed = c.admin("reshard", "--resume", "--json")
        assert resumed.exit_code == 0, resumed.output
        assert client.hset(names["hash"], b"after", b"resume") == 1
    finally:
        proxy.stop()
    after = _contents(b, names)
    expected_hash = {**before["hash"], b"after": b"resume"}  # type: ignore[dict-item]
    if written:
        expected_hash[b"during"] = b"held"
    assert after["hash"] == expected_hash
    for kind in ("list", "zset", "set", "string", "stream", "groups"):
        assert after[kind] == before[kind], kind
    assert all(0 < b.ttl(name) <= 1000 for name in names.values())
    assert a.dbsize() == 0 and not a.eval(keymove.LOCKED, 0)
    c.check_ok()
