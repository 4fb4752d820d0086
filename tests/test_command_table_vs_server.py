"""The command table agrees with a real redis-server: same commands, arity and flags, and the same keys as
COMMAND GETKEYS for hundreds of real invocations and for random argument lists."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from repo_tools import ROOT, load_tool

from kvstore_proxy.commands import (
    CommandError,
    CommandSpec,
    all_specs,
    arity_error,
    check_arity,
    key_indexes,
    lookup,
    unknown_command_error,
)

gen_commands = load_tool("gen_commands")


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """One throwaway redis-server (no persistence) for this module, stopped whatever happens."""
    with gen_commands.throwaway_redis() as p:
        yield p


@pytest.fixture(scope="module")
def raw(port: int) -> Iterator[Any]:
    conn = gen_commands.RawConnection(port)
    try:
        yield conn
    finally:
        conn.close()


def _send_raw(port: int, args: list[bytes]) -> bytes:
    """The exact reply line, which redis-py would trim of its error code."""
    out = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(out)
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            data += chunk
    return data


def _args(line: str) -> list[bytes]:
    return [b"" if word == "''" else word.encode() for word in line.split()]


def _has_keys(spec: CommandSpec) -> bool:
    return spec._fixed != ()


# --- the data -----------------------------------------------------------------------------------------


def test_checked_in_data_equals_what_the_server_reports(port: int) -> None:
    """command_data.json is exactly what tools/gen_commands.py would write today."""
    checked_in = json.loads((ROOT / "kvstore_proxy" / "command_data.json").read_text())
    assert gen_commands.collect(port) == checked_in


def test_every_server_command_is_in_the_table_with_the_same_arity_and_flags(raw: Any) -> None:
    seen: set[bytes] = set()

    def check(entry: list[Any]) -> None:
        name = entry[0].lower()
        seen.add(name)
        spec = lookup(name.split(b"|"))
        assert spec is not None, name
        assert spec.name == name
        assert spec.arity == entry[1], name
        assert spec.flags == {f.decode() for f in entry[2]}, name
        assert spec.acl_categories == {c.decode().removeprefix("@") for c in entry[6]}, name
        for sub in entry[9]:
            check(sub)

    for entry in raw("COMMAND"):
        check(entry)
    assert seen == {s.name for s in all_specs()}


def test_every_table_entry_exists_in_the_server(raw: Any) -> None:
    names = [s.name for s in all_specs()]
    infos = raw("COMMAND", "INFO", *names)
    assert len(infos) == len(names)
    for name, info in zip(names, infos, strict=True):
        assert info is not None, name
        assert info[0].lower() == name and info[1] == lookup(name.split(b"|")).arity  # type: ignore[union-attr]


# --- keys versus COMMAND GETKEYS --------------------------------------------------------------------


def _compare(raw: Any, args: list[bytes]) -> str:
    """key_indexes against COMMAND GETKEYS for one invocation; returns which way they agreed.

    Server returns keys: ours are the same. Server says the arguments are invalid: we raise CommandError.
    Server returns no keys (EVAL and FCALL may have none): we return none, or raise where the command
    itself would fail (EVAL s -1). A command without key arguments: we return none.
    """
    spec = lookup(args)
    assert spec is not None, args
    if not check_arity(spec, len(args)):
        return "arity"
    if len(args) == 1:  # too short for COMMAND GETKEYS; no command with keys gets here
        assert key_indexes(spec, args) == []
        return "keyless"
    try:
        server: list[bytes] | None = raw("COMMAND", "GETKEYS", *args)
        server_error = ""
    except redis.ResponseError as exc:
        server, server_error = None, str(exc)
    try:
        ours: list[int] | None = key_indexes(spec, args)
        our_error = ""
    except CommandError as exc:
        ours, our_error = None, str(exc)
    where = f"{args!r}: server {server!r} {server_error!r}, ours {ours!r} {our_error!r}"
    if server_error:
        if "has no key arguments" in server_error:
            assert ours == [], where
            return "keyless"
        assert our_error, where
        return "error"
    assert server is not None
    if not server:
        assert ours == [] or our_error, where
        return "none"
    assert ours is not None, where
    assert [args[i] for i in ours] == server, where
    return "keys"


# Real invocations of every command family with keys in a non-obvious place, and malformed ones.
INVOCATIONS = """
GET k
SET k v
SET k v GET
SET k v EX 10 NX GET
GETEX k PERSIST
APPEND k v
STRLEN k
SETRANGE k 0 v
GETRANGE k 0 -1
INCRBYFLOAT k 1.5
MGET a
MGET a b c d
MSET a 1
MSET a 1 b 2 c 3
MSETNX a 1 b 2
DEL a
DEL a b c
UNLINK a b
EXISTS a a b
TOUCH a b c
RENAME a b
RENAMENX a b
COPY a b
COPY a b DB 1 REPLACE
MOVE a 1
DUMP k
RESTORE k 0 payload REPLACE
OBJECT ENCODING k
OBJECT FREQ k
OBJECT IDLETIME k
OBJECT REFCOUNT k
OBJECT HELP
MEMORY USAGE k
MEMORY USAGE k SAMPLES 0
MEMORY STATS
EXPIRE k 10
EXPIRE k 10 NX
PEXPIREAT k 10 GT
EXPIRETIME k
PERSIST k
TTL k
TYPE k
LPUSH l a b c
RPUSHX l a
LPOP l 2
LINSERT l BEFORE a b
LPOS l a RANK 1 COUNT 0
LMOVE a b LEFT RIGHT
RPOPLPUSH a b
LMPOP 1 a LEFT
LMPOP 3 a b c RIGHT COUNT 2
LMPOP 0 a LEFT
LMPOP 2 a LEFT
LMPOP -1 a LEFT
LMPOP x a LEFT
LMPOP 1x a LEFT
BLPOP a 0
BLPOP a b c 0
BRPOP a b 1.5
BLMOVE a b LEFT RIGHT 0
BRPOPLPUSH a b 0
BLMPOP 0 2 a b LEFT
BLMPOP 0 1 a LEFT COUNT 3
BLMPOP 0 3 a b LEFT
BZPOPMIN a b 0
BZPOPMAX a 0
BZMPOP 0 1 a MIN
BZMPOP 0 2 a b MAX COUNT 1
SADD s a b
SREM s a
SMOVE a b m
SINTER a
SINTER a b c
SUNION a b
SDIFF a b c
SINTERSTORE d a
SINTERSTORE d a b c
SUNIONSTORE d a b
SDIFFSTORE d a b
SINTERCARD 1 a
SINTERCARD 2 a b LIMIT 5
SINTERCARD 0 a
SINTERCARD 3 a b
SINTERCARD -1 a
SINTERCARD x a
SMISMEMBER s a b
SSCAN s 0 MATCH * COUNT 10
HSET h f v f2 v2
HMSET h f v
HGETALL h
HSCAN h 0
HRANDFIELD h 2 WITHVALUES
ZADD z 1 a 2 b
ZRANGE z 0 -1 WITHSCORES
ZRANGE z (1 5 BYSCORE REV LIMIT 0 1
ZRANGESTORE d z 0 -1
ZUNIONSTORE d 1 a
ZUNIONSTORE d 2 a b
ZUNIONSTORE d 2 a b WEIGHTS 1 2 AGGREGATE MAX
ZUNIONSTORE d 0 a
ZUNIONSTORE d 3 a b
ZUNIONSTORE d x a
ZUNIONSTORE d 01 a
ZUNIONSTORE d 2x a b
ZINTERSTORE d 2 a b
ZDIFFSTORE d 2 a b
ZUNION 1 a
ZUNION 2 a b WITHSCORES
ZINTER 3 a b c
ZDIFF 2 a b
ZDIFF 3 a b
ZINTERCARD 2 a b
ZINTERCARD 2 a b LIMIT 10
ZINTERCARD 0 a
ZMPOP 1 a MIN
ZMPOP 2 a b MAX COUNT 10
ZMPOP 5 a MIN
ZRANGEBYSCORE z -inf +inf
ZREVRANGEBYLEX z + -
ZSCORE z a
ZMSCORE z a b
ZPOPMIN z 2
ZRANDMEMBER z 1
ZSCAN z 0
PFADD p a b
PFCOUNT p
PFCOUNT p q r
PFMERGE d a b
PFMERGE d
PFDEBUG GETREG p
SETBIT b 7 1
GETBIT b 7
BITCOUNT b 0 -1 BIT
BITPOS b 1
BITOP AND d a b
BITOP NOT d a
BITFIELD b GET u8 0
BITFIELD b SET u8 0 1 INCRBY u8 0 1
BITFIELD b
BITFIELD_RO b GET u8 0
LCS a b
LCS a b IDX MINMATCHLEN 2 WITHMATCHLEN
GEOADD g 13.36 38.11 a
GEODIST g a b km
GEOHASH g a b
GEOPOS g a
GEORADIUS g 15 37 200 km
GEORADIUS g 15 37 200 km WITHDIST COUNT 1
GEORADIUS g 15 37 200 km STORE d
GEORADIUS g 15 37 200 km STOREDIST d
GEORADIUS g 15 37 200 km STORE d STOREDIST e
GEORADIUS g 15 37 200 km STORE d STORE e
GEORADIUS g 15 37 200 km STORE
GEORADIUS g 15 37 200 km COUNT 1 ASC STORE d
GEORADIUS_RO g 15 37 200 km WITHCOORD
GEORADIUSBYMEMBER g a 100 km
GEORADIUSBYMEMBER g a 100 km STORE d
GEORADIUSBYMEMBER g a 100 km STOREDIST d
GEORADIUSBYMEMBER_RO g a 100 km
GEOSEARCH g FROMMEMBER a BYRADIUS 10 km
GEOSEARCHSTORE d g FROMMEMBER a BYBOX 10 10 km STOREDIST
XADD s * f v
XADD s MAXLEN ~ 10 * f v
XLEN s
XRANGE s - +
XREVRANGE s + - COUNT 1
XDEL s 1-1
XTRIM s MAXLEN 10
XACK s g 1-1
XCLAIM s g c 0 1-1
XAUTOCLAIM s g c 0 0-0
XPENDING s g
XSETID s 1-1
XGROUP CREATE s g $
XGROUP CREATE s g $ MKSTREAM
XGROUP CREATECONSUMER s g c
XGROUP DELCONSUMER s g c
XGROUP DESTROY s g
XGROUP SETID s g 0
XGROUP HELP
XINFO STREAM s
XINFO STREAM s FULL COUNT 5
XINFO GROUPS s
XINFO CONSUMERS s g
XINFO HELP
XREAD STREAMS a 0
XREAD STREAMS a b 0 0
XREAD COUNT 10 STREAMS a b c 0 0 0
XREAD BLOCK 0 STREAMS a 0
XREAD COUNT 1 BLOCK 10 STREAMS a b $ $
XREAD STREAMS streams 0
XREAD STREAMS STREAMS STREAMS 0 0 0
XREAD COUNT 1 STREAMS a
XREAD COUNT 1 a b
XREAD STREAMS a b c
XREADGROUP GROUP g c STREAMS s >
XREADGROUP GROUP g c COUNT 1 NOACK STREAMS a b > >
XREADGROUP GROUP g c BLOCK 0 STREAMS a >
XREADGROUP GROUP streams c STREAMS a >
XREADGROUP GROUP g streams STREAMS a >
XREADGROUP GROUP g c STREAMS a b c
XREADGROUP GROUP g c a b c d
XREADGROUP streams a b c d STREAMS k
SORT k
SORT k ALPHA DESC
SORT k LIMIT 0 10
SORT k BY w_*
SORT k GET # GET o_*
SORT k STORE d
SORT k BY w_* GET # STORE d
SORT k STORE d STORE e
SORT k STORE
SORT k LIMIT STORE x STORE
SORT k GET STORE STORE d
SORT k BY STORE
SORT_RO k
SORT_RO k BY w_* GET # ALPHA
SORT_RO k STORE d
EVAL s 0
EVAL s 0 a b
EVAL s 1 a
EVAL s 2 a b x y
EVAL s 3 a b
EVAL s -1 a
EVAL s x a
EVAL s 01 a
EVAL s 1x a
EVAL s +1 a
EVALSHA abc 1 a
EVALSHA abc 0
EVAL_RO s 2 a b
EVALSHA_RO abc 1 a
FCALL f 0
FCALL f 1 a
FCALL f 2 a b x
FCALL f 3 a
FCALL_RO f 1 a
MIGRATE h 1 k 0 5
MIGRATE h 1 k 0 5 COPY REPLACE
MIGRATE h 1 '' 0 5 KEYS a
MIGRATE h 1 '' 0 5 KEYS a b c
MIGRATE h 1 '' 0 5 COPY KEYS a b
MIGRATE h 1 '' 0 5 AUTH pw KEYS a
MIGRATE h 1 '' 0 5 AUTH keys KEYS a
MIGRATE h 1 '' 0 5 AUTH2 u keys KEYS a
MIGRATE h 1 '' 0 5 KEYS
MIGRATE h 1 k 0 5 KEYS a
MIGRATE keys 1 '' 0 5
MIGRATE h 1 '' 0 keys x
WATCH a b
SPUBLISH c m
SSUBSCRIBE a b
PING
GET
OBJECT ENCODING
"""


def test_key_indexes_agrees_with_command_getkeys_for_real_invocations(raw: Any) -> None:
    outcomes: dict[str, int] = {}
    for line in INVOCATIONS.strip().splitlines():
        outcome = _compare(raw, _args(line))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes["keys"] > 200 and outcomes["error"] > 15 and outcomes["none"] >= 4, outcomes


def test_key_indexes_agrees_with_command_getkeys_for_every_command_with_keys(raw: Any) -> None:
    """Each command with keys, called with the fewest arguments it accepts, and with a few more."""
    checked = 0
    for spec in all_specs():
        if not _has_keys(spec):
            continue
        name = spec.name.split(b"|")
        for extra in (0, 1, 2, 3, 5):
            args = name + [b"arg%d" % i for i in range(len(name), abs(spec.arity) + extra)]
            if _compare(raw, args) != "arity":
                checked += 1
    assert checked > 400


_TOKENS = [
    b"k1", b"k2", b"k3", b"a", b"", b"0", b"1", b"2", b"3", b"-1", b"01", b"1x", b"+1", b" 2", b"$", b">",
    b"STREAMS", b"streams", b"STORE", b"store", b"STOREDIST", b"KEYS", b"keys", b"BY", b"GET", b"get",
    b"LIMIT", b"COUNT", b"BLOCK", b"GROUP", b"NOACK", b"AUTH", b"AUTH2", b"COPY", b"REPLACE", b"WEIGHTS",
    b"STREAMS\x00x", b"LEFT", b"MIN", b"EX",
]  # fmt: skip
_KEYED_NAMES = sorted(s.name for s in all_specs() if _has_keys(s))


@st.composite
def _invocations(draw: st.DrawFn) -> list[bytes]:
    name = draw(st.sampled_from(_KEYED_NAMES))
    spec = lookup(name.split(b"|"))
    assert spec is not None
    words = name.split(b"|")
    need = max(0, abs(spec.arity) - len(words))
    more = 0 if spec.arity > 0 else 9
    rest = draw(st.lists(st.sampled_from(_TOKENS), min_size=need, max_size=need + more))
    return words + rest


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=_invocations())
def test_key_indexes_agrees_with_command_getkeys_for_random_arguments(raw: Any, args: list[bytes]) -> None:
    _compare(raw, args)


# --- errors versus the commands themselves ------------------------------------------------------------

MALFORMED = """
EVAL s 3 a
EVAL s -1 a
EVAL s x a
EVALSHA_RO {sha} 2 a
EVALSHA {sha} -2 a
FCALL f 3 a
FCALL f -2 a
FCALL f x a
FCALL_RO f 2 a
ZUNIONSTORE d 0 a
ZUNIONSTORE d 3 a
ZUNIONSTORE d x a
ZINTERSTORE d -1 a
ZDIFFSTORE d 5 a
ZUNION 0 a
ZUNION x a
ZINTER 2 a
ZDIFF 3 a
ZINTERCARD 0 a
ZINTERCARD 3 a
ZINTERCARD x a
SINTERCARD 0 a
SINTERCARD 2 a
SINTERCARD x a
LMPOP 0 a LEFT
LMPOP 3 a LEFT
LMPOP x a LEFT
ZMPOP 0 a MIN
ZMPOP 3 a MIN
XREAD COUNT 1 STREAMS a
XREAD COUNT 1 a b
XREADGROUP GROUP g c foo a b
MIGRATE h 1 k 0 5 KEYS a
"""


def test_key_errors_are_the_errors_the_commands_themselves_reply(port: int, raw: Any) -> None:
    # A script and a function that exist, or their lookup would fail before numkeys is read.
    sha = raw("SCRIPT", "LOAD", "return 1").decode()
    raw("FUNCTION", "LOAD", "REPLACE", "#!lua name=lib\nredis.register_function('f', function(k, a) return 1 end)")
    for line in MALFORMED.strip().splitlines():
        args = _args(line.format(sha=sha))
        spec = lookup(args)
        assert spec is not None and check_arity(spec, len(args)), line
        with pytest.raises(CommandError) as exc:
            key_indexes(spec, args)
        assert _send_raw(port, args) == b"-" + str(exc.value).encode() + b"\r\n", line


@pytest.mark.parametrize(
    "line", ["NOSUCH", "nosuch a b", "OBJECT bogus", "client NOPE x", "xinfo", "hello\x00there a"]
)
def test_unknown_command_errors_are_redis_own(port: int, line: str) -> None:
    args = [w.encode() for w in line.split(" ")]
    if lookup(args) is not None:
        spec = lookup(args)
        assert spec is not None and not check_arity(spec, len(args))
        assert _send_raw(port, args) == b"-" + arity_error(spec) + b"\r\n"
    else:
        assert _send_raw(port, args) == b"-" + unknown_command_error(args) + b"\r\n"


def test_unknown_command_error_with_long_and_multiline_args(port: int) -> None:
    args = [b"nosuch", b"x" * 100, b"y\r\nz" * 20, b"w"]
    assert _send_raw(port, args) == b"-" + unknown_command_error(args) + b"\r\n"


@pytest.mark.parametrize("line", ["GET", "GET a b", "OBJECT ENCODING", "SET k", "MGET", "XINFO STREAM"])
def test_arity_errors_are_redis_own(port: int, line: str) -> None:
    args = _args(line)
    spec = lookup(args)
    assert spec is not None and not check_arity(spec, len(args))
    assert _send_raw(port, args) == b"-" + arity_error(spec) + b"\r\n"
