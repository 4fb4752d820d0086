"""Scripts and functions on every group: keyless scripts, the registry, replay to new groups and masters."""

from __future__ import annotations

import hashlib

import pytest
import redis

from kvstore_admin.processes import wait_until
from kvstore_cluster import paths
from kvstore_cluster.keyrules import tag_slot
from kvstore_cluster.scripts import Library, Script, library_name
from kvstore_cluster.slots import key_slot
from kvstore_cluster.store import ClusterStore

from .admin_helpers import admin, slot_owner
from .conftest import ProxyCluster
from .test_commands import keys_on_every_group

SET_ANY = "return redis.call('SET', ARGV[1], ARGV[2])"
GET_KEY = "return redis.call('GET', KEYS[1])"
LIB = """#!lua name=kvlib
redis.register_function('kv_get', function(keys, args) return redis.call('GET', keys[1]) end)
redis.register_function{function_name='kv_ro', callback=function(keys, args) return 'ro' end, flags={'no-writes'}}
"""
LIB2 = LIB.replace("kvlib", "kvlib2").replace("kv_get", "kv_get2").replace("kv_ro", "kv_ro2")



def _owner(c: ProxyCluster, slot: int) -> str | None:
    return slot_owner(c.zk_hosts, slot, c.name)


def _libraries(listing) -> list[bytes]:  # type: ignore[no-untyped-def]
    """Library names of a FUNCTION LIST reply, RESP2 (flat pairs) or RESP3 (maps)."""
    out = []
    for lib in listing:
        fields = lib if isinstance(lib, dict) else dict(zip(lib[::2], lib[1::2], strict=False))
        out.append(fields[b"library_name"])
    return out


def _everywhere(c: ProxyCluster) -> list[list[bytes]]:
    return [_libraries(c.direct(g).function_list()) for g in c.nodes]


def _registry(c: ProxyCluster) -> tuple[list[str], list[str]]:
    client = c.zk()
    try:
        store = ClusterStore(client, c.name)
        return sorted(store.read_scripts().items), sorted(store.read_libraries().items)
    finally:
        client.stop()
        client.close()


@pytest.fixture
def sc(shared_cluster: ProxyCluster):  # type: ignore[no-untyped-def]
    """The module's cluster with empty keyspaces, script caches, libraries and registry."""
    c = shared_cluster
    assert c.proxy is not None
    pc = c.proxy.client()
    pc.script_flush()
    pc.function_flush()
    c.flush_all()
    for gid in c.nodes:
        c.direct(gid).script_flush()
        c.direct(gid).function_flush()
    yield c
    admin(c.zk_hosts, "option", "set", "keyless-tag", "", cluster=c.name)


def test_the_records_check_their_names() -> None:
    assert Script.decode(Script(b"return 1").encode(), hashlib.sha1(b"return 1").hexdigest()).body == b"return 1"
    with pytest.raises(ValueError, match="SHA1"):
        Script.decode(Script(b"return 1").encode(), "0" * 40)
    with pytest.raises(ValueError, match="not base64"):
        Script.decode(b'{"body":"***"}', "0" * 40)
    assert library_name(LIB.encode()) == "kvlib" and library_name(b"return 1") is None
    assert Library.decode(Library(LIB.encode()).encode(), "kvlib").code == LIB.encode()
    with pytest.raises(ValueError, match="declares library 'kvlib'"):
        Library.decode(Library(LIB.encode()).encode(), "other")


def test_keyless_scripts_run_on_the_keyless_tag_s_group(sc: ProxyCluster) -> None:
    pc = sc.proxy.client()  # type: ignore[union-attr]
    assert pc.eval(SET_ANY, 0, "kl:a", "1") in (True, b"OK")
    assert sc.direct(_owner(sc, 0)).get("kl:a") == b"1"  # default: the empty tag, slot 0
    tag = next(t for t in (f"t{i}" for i in range(100)) if _owner(sc, tag_slot(t.encode())) != _owner(sc, 0))
    assert admin(sc.zk_hosts, "option", "set", "keyless-tag", tag, cluster=sc.name).exit_code == 0
    group = _owner(sc, tag_slot(tag.encode()))
    wait_until(lambda: pc.eval(SET_ANY, 0, "kl:b", "2") in (True, b"OK") and sc.direct(group).get("kl:b") == b"2",
               10, "the option to apply")
    sha = pc.script_load(SET_ANY)
    assert pc.evalsha(sha, 0, "kl:c", "3") in (True, b"OK") and sc.direct(group).get("kl:c") == b"3"
    assert pc.eval_ro("return 'ro'", 0) == b"ro"
    with pc.pipeline(transaction=True) as p:
        p.eval(SET_ANY, 0, "kl:d", "4")
        assert p.execute() == [b"OK"]
    assert sc.direct(group).get("kl:d") == b"4"


def test_script_load_exists_flush_on_every_group(sc: ProxyCluster) -> None:
    pc = sc.proxy.client()  # type: ignore[union-attr]
    sha = pc.script_load(GET_KEY)
    assert sha == hashlib.sha1(GET_KEY.encode()).hexdigest()
    assert all(sc.direct(g).script_exists(sha) == [True] for g in sc.nodes)
    assert pc.script_exists(sha, "0" * 40) == [True, False]
    for k in keys_on_every_group(sc, 1):
        pc.set(k, k)
        assert pc.evalsha(sha, 1, k) == k
    wait_until(lambda: _registry(sc)[0] == [sha], 10, "the script to be registered")
    assert pc.script_flush() is True
    assert not any(sc.direct(g).script_exists(sha)[0] for g in sc.nodes)
    wait_until(lambda: _registry(sc)[0] == [], 10, "the registry to be emptied")
    with pytest.raises(redis.exceptions.NoScriptError):
        pc.evalsha(sha, 1, "sl:x")
    with pytest.raises(redis.ResponseError, match="SYNC|ASYNC"):
        pc.execute_command("SCRIPT", "FLUSH", "SIDEWAYS")
    with pytest.raises(redis.ResponseError, match="NOTBUSY"):
        pc.script_kill()


def test_a_script_run_with_eval_works_by_sha_on_every_group(sc: ProxyCluster) -> None:
    pc = sc.proxy.client()  # type: ignore[union-attr]
    keys = keys_on_every_group(sc, 1)
    for k in keys:
        pc.set(k, k)
    assert pc.eval(GET_KEY, 1, keys[0]) == keys[0]  # only one group has seen the script
    sha = hashlib.sha1(GET_KEY.encode()).hexdigest()
    wait_until(lambda: _registry(sc)[0] == [sha], 10, "the script to be registered")
    assert [pc.evalsha(sha, 1, k) for k in keys] == keys  # loaded where it was missing
    # a group whose cache is flushed behind the proxy's back: the NOSCRIPT is repaired unseen
    for g in sc.nodes:
        sc.direct(g).script_flush()
    assert [pc.evalsha(sha, 1, k) for k in keys] == keys
    assert "noscript_repaired" in sc.proxy.output()  # type: ignore[union-attr]
    # an unknown script is the client's NOSCRIPT
    with pytest.raises(redis.exceptions.NoScriptError):
        pc.evalsha("f" * 40, 1, keys[0])


def test_functions_are_the_same_on_every_group(sc: ProxyCluster) -> None:
    pc = sc.proxy.client()  # type: ignore[union-attr]
    keys = keys_on_every_group(sc, 1)
    for k in keys:
        pc.set(k, k)
    assert pc.function_load(LIB) == b"kvlib"
    assert _everywhere(sc) == [[b"kvlib"]] * 3
    assert [pc.fcall("kv_get", 1, k) for k in keys] == keys
    assert pc.fcall_ro("kv_ro", 1, keys[0]) == b"ro"
    assert pc.fcall_ro("kv_ro", 0) == b"ro"  # no key: on the keyless tag's group
    with pytest.raises(redis.ResponseError, match="Library 'kvlib' already exists"):
        pc.function_load(LIB)
    assert pc.function_load(LIB, replace=True) == b"kvlib"
    assert _libraries(pc.function_list()) == [b"kvlib"]
    listed = pc.function_list(library="kv*", withcode=True)
    assert LIB.encode() in listed[0]  # type: ignore[index,operator]
    wait_until(lambda: _registry(sc)[1] == ["kvlib"], 10, "the library to be registered")
    dump = pc.function_dump()
    assert pc.function_delete("kvlib") in (True, b"OK")
    wait_until(lambda: _registry(sc)[1] == [], 10, "the library to be unregistered")
    assert _everywhere(sc) == [[]] * 3
    with pytest.raises(redis.ResponseError, match="Library not found"):
        pc.function_delete("kvlib")
    assert pc.function_restore(dump) in (True, b"OK")
    assert [pc.fcall("kv_get", 1, k) for k in keys] == keys
    wait_until(lambda: _registry(sc)[1] == ["kvlib"], 10, "the restored library to be registered")
    assert pc.function_load(LIB2) == b"kvlib2"
    assert pc.function_restore(dump, "FLUSH") in (True, b"OK")
    wait_until(lambda: _registry(sc)[1] == ["kvlib"], 10, "the registry to follow a FLUSH restore")
    assert _everywhere(sc) == [[b"kvlib"]] * 3
    stats = pc.function_stats()
    assert b"engines" in stats or "engines" in stats  # type: ignore[operator]
    with pytest.raises(redis.ResponseError, match="NOTBUSY"):
        pc.execute_command("FUNCTION", "KILL")
    with pytest.raises(redis.ResponseError, match="Wrong restore policy"):
        pc.execute_command("FUNCTION", "RESTORE", dump, "SIDEWAYS")
    with pytest.raises(redis.ResponseError, match="Error compiling|user_function|syntax"):
        pc.function_load("#!lua name=broken\nthis is not lua")
    assert _registry(sc)[1] == ["kvlib"]
    assert pc.function_flush() in (True, b"OK")
    wait_until(lambda: _registry(sc)[1] == [], 10, "the registry to be emptied")
    assert _everywhere(sc) == [[]] * 3


def test_garbage_in_the_registry_is_logged_and_left_out(sc: ProxyCluster) -> None:
    pc = sc.proxy.client()  # type: ignore[union-attr]
    client = sc.zk()
    try:
        client.create(f"{paths.scripts(sc.name)}/{'a' * 40}", b"{not json")
        client.create(f"{paths.functions(sc.name)}/badlib", b'{"body":"aGVsbG8="}')
        wait_until(lambda: sc.proxy.output().count("registry_entry_rejected") >= 2,  # type: ignore[union-attr]
                   10, "the proxy to reject both")
        assert pc.ping() and pc.eval("return 1", 0) == 1
    finally:
        client.delete(f"{paths.scripts(sc.name)}/{'a' * 40}")
        client.delete(f"{paths.functions(sc.name)}/badlib")
        client.stop()
        client.close()


def test_a_key_rule_routes_scripts_and_functions_by_their_keys(sc: ProxyCluster) -> None:
    pc = sc.proxy.client()  # type: ignore[union-attr]
    assert admin(sc.zk_hosts, "keyrule", "add", "--tag", "sc", "sc:", cluster=sc.name).exit_code == 0
    try:
        assert pc.eval("redis.call('SET', KEYS[1], 'a'); return redis.call('SET', KEYS[2], 'b')", 2,
                       "sc:one", "sc:two") in (True, b"OK")
        group = _owner(sc, key_slot(b"sc"))
        assert sc.direct(group).mget("sc:one", "sc:two") == [b"a", b"b"]
    finally:
        assert admin(sc.zk_hosts, "keyrule", "remove", "sc:", cluster=sc.name).exit_code == 0
