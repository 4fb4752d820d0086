"""Key rules: the record, the routing of a change, and live changes through a 3-group cluster."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest
import redis

from kvstore_admin.processes import wait_until
from kvstore_cluster import paths
from kvstore_cluster.codec import ModelError
from kvstore_cluster.keyrules import KeyRule, KeyRules, RuleChange, tag_slot
from kvstore_cluster.ops.context import CRASH_HOOK_ENV, CRASH_HOOK_EXIT
from kvstore_cluster.ops.rule_change import added, glob_escape, removed
from kvstore_cluster.slots import key_slot
from kvstore_cluster.store import ClusterStore

from .admin_helpers import admin, admin_process, slot_owner
from .conftest import ProxyCluster


def R(prefix: bytes, tag: bytes) -> KeyRule:  # noqa: N802 - reads like a literal
    return KeyRule(prefix, tag)


# --- the record --------------------------------------------------------------------------------------------


def test_the_record_round_trips_any_bytes() -> None:
    record = KeyRules((R(b"rq:", b"rq"), R(b"\x06\xff", b"{x}"), R(b"celery", b"")),
                      RuleChange((R(b"rq:", b"jobs"),), "add --tag jobs rq:"))
    again = KeyRules.decode(record.encode())
    assert again == record
    assert [r.prefix for r in again.rules] == sorted([b"rq:", b"\x06\xff", b"celery"])
    assert again.slotter().key_slot(b"rq:queue:x") == key_slot(b"rq")
    assert again.target_slotter().key_slot(b"rq:queue:x") == key_slot(b"jobs")
    assert R(b"a", b"{x}").slot == tag_slot(b"{x}") != key_slot(b"{x}")  # the tag is hashed as it is


@pytest.mark.parametrize(("raw", "message"), [
    (b"nope", "not valid JSON"),
    (b'{"format":1}', "missing field 'rules'"),
    (b'{"format":1,"rules":{}}', "must be a JSON list"),
    (b'{"format":1,"rules":[{"prefix":"a"}]}', "missing field 'tag'"),
    (b'{"format":1,"rules":[{"prefix":"","tag":"a"}]}', "must not be empty"),
    (b'{"format":1,"rules":[{"prefix":"a","tag":"x"},{"prefix":"a","tag":"y"}]}', "appears twice"),
    (b'{"format":1,"rules":[],"change":{"rules":[]}}', "missing field 'request'"),
    (b'{"format":1,"rules":[],"change":[]}', "wrong type"),
])
def test_garbage_is_refused_with_a_clear_message(raw: bytes, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        KeyRules.decode(raw)


def test_during_a_change_every_key_that_changes_group_lands_in_a_hub() -> None:
    """Whatever the rules before and after, a key whose slot changes routes to a hub slot, and a
    key whose slot does not change routes to that very slot (so only hub slots need a look)."""
    rng = random.Random(7)
    alphabet = b"ab:"
    for _ in range(200):
        def rules() -> tuple[KeyRule, ...]:
            prefixes = {bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(0, 5))}
            return tuple(R(p, rng.choice([b"t1", b"t2", b"t3"])) for p in prefixes)

        record = KeyRules(rules(), RuleChange(rules(), "test"))
        routing, hubs = record.routing()
        old, new = record.slotter(), record.target_slotter()
        for _ in range(50):
            key = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
            if old.key_slot(key) != new.key_slot(key):
                assert routing.key_slot(key) in hubs, (record, key)
            else:
                assert routing.key_slot(key) == old.key_slot(key) or routing.key_slot(key) in hubs


def test_planning_add_and_remove() -> None:
    current = (R(b"a:", b"x"),)
    assert added(current, b"y", [b"b:", b"a:"]) == (R(b"a:", b"y"), R(b"b:", b"y"))
    assert removed(current, [b"a:"]) == ()
    with pytest.raises(ModelError, match="no key rule for prefix 'zz'"):
        removed(current, [b"zz"])
    assert glob_escape(b"a*b?[c]\\") == b"a\\*b\\?\\[c\\]\\\\"


# --- through a cluster ---------------------------------------------------------------------------------------


def _rules(c: ProxyCluster, *args: str, expect: int = 0) -> dict:  # type: ignore[type-arg]
    result = admin(c.zk_hosts, "keyrule", *args, "--json", cluster=c.name)
    assert result.exit_code == expect, result.output
    return json.loads(result.output) if expect == 0 else {}


def _owner_of_slot(c: ProxyCluster, slot: int) -> str | None:
    return slot_owner(c.zk_hosts, slot, c.name)


def _where(c: ProxyCluster, key: bytes) -> list[str]:
    return [gid for gid in c.nodes if c.direct(gid).exists(key)]


@pytest.fixture
def rules_cluster(shared_cluster: ProxyCluster):  # type: ignore[no-untyped-def]
    """The module's cluster, emptied, with no key rules before and after the test."""
    shared_cluster.flush_all()
    yield shared_cluster
    client = shared_cluster.zk()
    try:
        store = ClusterStore(client, shared_cluster.name)
        if store.read_keyrules().value.rules:
            listed = [r.prefix.decode() for r in store.read_keyrules().value.rules]
            admin(shared_cluster.zk_hosts, "keyrule", "remove", *listed, cluster=shared_cluster.name)
    finally:
        client.stop()
        client.close()
    shared_cluster.flush_all()


def test_a_rule_puts_an_application_s_keys_in_one_slot(rules_cluster: ProxyCluster) -> None:
    c = rules_cluster
    assert c.proxy is not None
    pc = c.proxy.client()
    pc.rpush("rq:queue:default", "job1")
    with pytest.raises(redis.ResponseError, match="hash to the same slot"):
        pc.lmove("rq:queue:default", "rq:queue:default:intermediate")
    out = _rules(c, "add", "--tag", "rq", "rq:")
    assert out["changed"] and out["keys_moved"] in (0, 1)  # moved if its group changed
    listed = _rules(c, "list")
    assert listed["rules"] == [{"prefix": "rq:", "tag": "rq", "slot": key_slot(b"rq")}] and listed["change"] is None
    # every key of the prefix is in the tag's slot now: multi-key commands, transactions, scripts
    assert pc.lmove("rq:queue:default", "rq:queue:default:intermediate") == b"job1"
    owner = _owner_of_slot(c, key_slot(b"rq"))
    assert _where(c, b"rq:queue:default:intermediate") == [owner]
    with pc.pipeline(transaction=True) as p:
        p.rpush("rq:queue:other", "a").lmove("rq:queue:other", "rq:finished").execute()
    assert pc.eval("return redis.call('LLEN', KEYS[1]) + redis.call('LLEN', KEYS[2])", 2,
                   "rq:finished", "rq:queue:default:intermediate") == 2
    # the proxy acknowledged the rules' version in its registration
    client = c.zk()
    try:
        store = ClusterStore(client, c.name)
        version = store.read_keyrules().version
        assert all(reg.keyrules_version == version for reg in store.proxies().items.values())
    finally:
        client.stop()
        client.close()
    # adding the same rule again changes nothing
    assert not _rules(c, "add", "--tag", "rq", "rq:")["changed"]
    # removing it: the keys go back where their own names hash, and CROSSSLOT is back
    out = _rules(c, "remove", "rq:")
    assert out["changed"] and out["rules"] == []
    assert _where(c, b"rq:finished") == [_owner_of_slot(c, key_slot(b"rq:finished"))]
    with pytest.raises(redis.ResponseError, match="hash to the same slot"):
        pc.lmove("rq:finished", "rq:queue:default:intermediate")
    assert admin(c.zk_hosts, "check", cluster=c.name).exit_code == 0


def test_bad_requests_are_refused(rules_cluster: ProxyCluster) -> None:
    c = rules_cluster
    result = admin(c.zk_hosts, "keyrule", "remove", "nothing:", cluster=c.name)
    assert result.exit_code == 1 and "no key rule for prefix 'nothing:'" in result.output
    result = admin(c.zk_hosts, "keyrule", "add", "--tag", "x", "", cluster=c.name)
    assert result.exit_code == 1 and "must not be empty" in result.output
    result = admin(c.zk_hosts, "keyrule", "add", "a:", cluster=c.name)
    assert result.exit_code == 2 and "--tag" in result.output


def _incr_load(pc_factory, keys: list[bytes], stop: threading.Event, acked: dict[bytes, int],  # type: ignore[no-untyped-def]
               errors: list[str]) -> None:
    client = pc_factory()
    rng = random.Random()
    while not stop.is_set():
        k = rng.choice(keys)
        try:
            client.incr(k)
        except redis.ResponseError as exc:
            if "TRYAGAIN" not in str(exc):  # TRYAGAIN: nothing ran
                errors.append(str(exc))
            continue
        acked[k] = acked.get(k, 0) + 1
    client.close()


def test_rules_change_on_a_populated_cluster_under_writes(rules_cluster: ProxyCluster) -> None:
    """INCR model: every acknowledged increment is there afterwards, none twice, and check is clean."""
    c = rules_cluster
    assert c.proxy is not None
    pc = c.proxy.client()
    keys = [f"app:counter:{i}".encode() for i in range(300)] + [f"app:{{own}}:{i}".encode() for i in range(20)]
    with pc.pipeline(transaction=False) as p:
        for k in keys:
            p.set(k, 0)
        p.execute()
    for i in range(200):  # bystanders, never touched by the rules
        pc.set(f"other:{i}", i)
    stop = threading.Event()
    acked: list[dict[bytes, int]] = [{} for _ in range(4)]
    errors: list[str] = []
    threads = [threading.Thread(target=_incr_load, args=(c.proxy.client, keys, stop, acked[i], errors))
               for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        added_ = _rules(c, "add", "--tag", "app", "app:")
        time.sleep(0.3)
        removed_ = _rules(c, "remove", "app:")
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:5]
    assert added_["keys_moved"] > 0 and removed_["keys_moved"] > 0
    total: dict[bytes, int] = {}
    for a in acked:
        for k, n in a.items():
            total[k] = total.get(k, 0) + n
    values = dict(zip(keys, pc.mget(keys), strict=True))
    assert {k: int(v) for k, v in values.items()} == {k: total.get(k, 0) for k in keys}
    assert sum(total.values()) > 100  # the load really ran across the changes
    assert [int(pc.get(f"other:{i}")) for i in range(200)] == list(range(200))
    assert admin(c.zk_hosts, "check", cluster=c.name).exit_code == 0


def test_a_change_interrupted_is_held_then_resumed(rules_cluster: ProxyCluster) -> None:
    c = rules_cluster
    assert c.proxy is not None
    pc = c.proxy.client(socket_timeout=10)
    keys = [f"job:{i}".encode() for i in range(100)]
    for k in keys:
        pc.set(k, k)
    crashed = admin_process(c.zk_hosts, "keyrule", "add", "--tag", "jobs", "job:", cluster=c.name,
                            env={CRASH_HOOK_ENV: "rules-held"})
    assert crashed.returncode == CRASH_HOOK_EXIT, crashed.stderr
    listed = _rules(c, "list")
    assert listed["change"]["request"] == "add --tag jobs job:" and listed["rules"] == []
    status = json.loads(admin(c.zk_hosts, "status", "--json", cluster=c.name).output)
    assert status["keyrules"]["change"] == "add --tag jobs job:" and not status["healthy"]
    target = _owner_of_slot(c, key_slot(b"jobs"))
    moving = next(k for k in keys if _owner_of_slot(c, key_slot(k)) != target)
    staying = next(k for k in keys if _owner_of_slot(c, key_slot(k)) == target)
    assert pc.get(staying) == staying  # a key that keeps its group is served meanwhile
    began = time.monotonic()
    with pytest.raises(redis.ResponseError, match="moving to another group"):
        pc.get(moving)  # held, then refused: nothing ran
    assert time.monotonic() - began >= 1.5
    # another change waits for this one; so does a reshard
    result = admin(c.zk_hosts, "keyrule", "add", "--tag", "x", "y:", cluster=c.name)
    assert result.exit_code == 1 and "keyrule resume" in result.output
    result = admin(c.zk_hosts, "reshard", "--slots", "0", "--to", "g2", cluster=c.name)
    assert result.exit_code == 1 and "key rule change is in progress" in result.output
    # a request held while the change completes is answered from the new group
    answer: list[object] = []
    reader = threading.Thread(target=lambda: answer.append(c.proxy.client().get(moving)))  # type: ignore[union-attr]
    reader.start()
    done = _rules(c, "resume")
    reader.join(10)
    assert done["changed"] and answer == [moving]
    assert {k: pc.get(k) for k in keys} == {k: k for k in keys}
    assert all(_where(c, k) == [target] for k in keys)
    assert admin(c.zk_hosts, "check", cluster=c.name).exit_code == 0


def test_keyspace_notifications_follow_the_rules(rules_cluster: ProxyCluster) -> None:
    """A keyspace channel lives with its key's slot, the rules applied: the notification arrives."""
    c = rules_cluster
    assert c.proxy is not None
    _rules(c, "add", "--tag", "ks", "ks:")
    pc = c.proxy.client()
    pc.config_set("notify-keyspace-events", "KA")
    try:
        sub = c.proxy.client().pubsub()
        sub.subscribe("__keyspace@0__:ks:item")
        assert sub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        pc.set("ks:item", "1")
        message = sub.get_message(timeout=5)
        assert message is not None and message["data"] == b"set", message
        assert c.direct(_owner_of_slot(c, key_slot(b"ks"))).get("ks:item") == b"1"
        sub.close()
    finally:
        pc.config_set("notify-keyspace-events", "")


def test_garbage_in_the_rules_and_options_znodes(rules_cluster: ProxyCluster) -> None:
    c = rules_cluster
    assert c.proxy is not None
    _rules(c, "add", "--tag", "t", "g:")
    pc = c.proxy.client()
    pc.set("g:1", "v")
    client = c.zk()
    try:
        data, _ = client.get(paths.keyrules(c.name))
        client.set(paths.keyrules(c.name), b'{"format":1,"rules":[{"prefix":""}]}')
        result = admin(c.zk_hosts, "keyrule", "list", cluster=c.name)
        assert result.exit_code == 7 and "keyrules holds malformed data" in result.output
        wait_until(lambda: "keyrules_rejected" in c.proxy.output(), 10, "the proxy to reject the rules")
        assert pc.get("g:1") == b"v" and pc.rpoplpush("g:a", "g:b") is None  # still by the rules it had
        client.set(paths.keyrules(c.name), data)
        # the options: a keyless tag that is not a string
        client.ensure_path(paths.options(c.name))
        options, _ = client.get(paths.options(c.name))
        client.set(paths.options(c.name), b'{"format":1,"options":{"keyless-tag":7}}')
        result = admin(c.zk_hosts, "option", "list", cluster=c.name)
        assert result.exit_code == 7 and "must be a string" in result.output
        wait_until(lambda: "options_rejected" in c.proxy.output(), 10, "the proxy to reject the options")
        assert pc.eval("return 1", 0) == 1 and pc.get("g:1") == b"v"
        client.set(paths.options(c.name), options or b'{"format":1,"options":{}}')
    finally:
        client.stop()
        client.close()
