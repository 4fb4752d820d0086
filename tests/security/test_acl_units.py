"""Pure logic of users and rules: Redis globs, rules applied in order, the users record's strict decoding, rates."""

from __future__ import annotations

import pytest

from kvstore_cluster.codec import ModelError
from kvstore_cluster.users import User, Users, hash_password
from kvstore_proxy.acl import allowed_commands, glob_match
from kvstore_proxy.limits import RateBucket, share


@pytest.mark.parametrize("pattern, text, matches", [
    (b"app1:*", b"app1:x", True), (b"app1:*", b"app2:x", False), (b"*", b"", True),
    (b"h?llo", b"hello", True), (b"h?llo", b"hllo", False), (b"h[ae]llo", b"hallo", True),
    (b"h[^e]llo", b"hello", False), (b"h[^e]llo", b"hallo", True), (b"h[a-b]llo", b"hbllo", True),
    (b"h[b-a]llo", b"hbllo", True), (b"a\\*b", b"a*b", True), (b"a\\*b", b"axb", False),
    (b"x*", b"x\nnewline", True), (b"[", b"[", False),
])
def test_redis_globs(pattern: bytes, text: bytes, matches: bool) -> None:
    assert glob_match(pattern, text) is matches


def test_rules_apply_in_order() -> None:
    cmds = allowed_commands(("+@all", "-@dangerous"))
    assert cmds is not None and b"get" in cmds and b"flushall" not in cmds and b"keys" not in cmds
    assert allowed_commands(("+@all",)) is None  # every command: no set to look things up in
    read = allowed_commands(("+@read", "-get", "+config|get"))
    assert read is not None and b"mget" in read and b"get" not in read and b"config|get" in read
    assert b"config|set" not in read and b"set" not in read
    container = allowed_commands(("+client",))
    assert container is not None and b"client|setname" in container and b"client|list" in container
    assert allowed_commands(("-@all", "+get", "+nosuch")) == frozenset({b"get"})


def test_user_rules_like_acl_setuser() -> None:
    u = User("u").with_rules(["~a:*", "~a:*", "&c:*", "+@read", "off"])
    assert (u.keys, u.channels, u.commands, u.enabled) == (("a:*",), ("c:*",), ("+@read",), False)
    u = u.with_rules(["allkeys", "~b:*", "nocommands", "+get", "on", "resetchannels"])
    assert (u.keys, u.channels, u.commands, u.enabled) == (("*",), (), ("-@all", "+get"), True)
    for bad in (["+@nosuch"], [">pw"], ["nopass"], ["%R~x"], ["whatever"], ["+GET BAD"], ["~"]):
        with pytest.raises(ModelError):
            u.with_rules(bad)


def test_users_record_is_strict() -> None:
    good = Users({"a": User("a", passwords=(hash_password(b"x"),), commands=("+get",), keys=("k:*",),
                            max_connections=3)})
    assert Users.decode(good.encode()) == good
    for raw in (b'{"users": []}', b'{"users": {"a": 1}}', b'{"users": {"a": {"enabled": true}}}',
                b'{"users": {"bad name": {"enabled": true, "passwords": [], "commands": [], "keys": [],'
                b' "channels": []}}}',
                b'{"users": {"a": {"enabled": true, "passwords": ["nothex"], "commands": [], "keys": [],'
                b' "channels": []}}}',
                b'{"users": {"a": {"enabled": true, "passwords": [], "commands": ["get"], "keys": [],'
                b' "channels": []}}}',
                b'{"users": {"a": {"enabled": 1, "passwords": [], "commands": [], "keys": [], "channels": []}}}',
                b'{"users": {"a": {"enabled": true, "passwords": [], "commands": [], "keys": [], "channels": [],'
                b' "max_rps": 0}}}'):
        with pytest.raises(ModelError):
            Users.decode(raw)


def test_rates_and_shares() -> None:
    bucket = RateBucket(10)
    t = bucket.stamp
    assert sum(bucket.take(t) for _ in range(20)) == 10  # a second's worth, then refused
    assert bucket.take(t + 0.1) and not bucket.take(t + 0.1)  # refilled at 10/s
    # A monotonic clock hours into a host's uptime: (t + 0.1) - t comes out a hair under 0.1, which
    # must still refill a whole token.
    late = RateBucket(10)
    late.stamp, late.tokens = 17884.893862564, 0.0
    assert (late.stamp + 0.1) - late.stamp < 0.1
    assert late.take(late.stamp + 0.1)
    assert share(None, 4) is None and share(10, 4) == 3 and share(1, 4) == 1
