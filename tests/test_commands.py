"""The command table classifies every Redis command, resolves subcommands and finds keys (no server)."""

from __future__ import annotations

import json

import pytest
from repo_tools import ROOT, load_tool

from kvstore_proxy import commands
from kvstore_proxy.commands import (
    FORWARD_ANY,
    CommandError,
    CommandSpec,
    Kind,
    Merge,
    all_specs,
    arity_error,
    check_arity,
    key_indexes,
    lookup,
    unknown_command_error,
)


def _spec(name: str) -> CommandSpec:
    parts = [p.encode() for p in name.split("|")]
    spec = lookup(parts)
    assert spec is not None, name
    return spec


def _args(line: str) -> list[bytes]:
    return [b"" if word == "''" else word.encode() for word in line.split()]


# --- classification ---------------------------------------------------------------------------------


def test_every_command_in_the_data_has_a_spec_and_a_kind() -> None:
    data = json.loads((ROOT / "kvstore_proxy" / "command_data.json").read_text())["commands"]
    specs = {s.name.decode(): s for s in all_specs()}
    assert set(specs) == set(data)
    assert all(isinstance(s.kind, Kind) for s in specs.values())
    assert len(specs) > 300  # Redis 7.0 has 240 commands and over 100 subcommands


def test_no_command_is_refused_only_for_want_of_a_decision() -> None:
    """A regenerated table with new keyless commands must make someone decide about them."""
    assert commands._UNDECIDED == set()


def test_multi_is_exactly_the_six_split_commands_with_their_merge() -> None:
    multi = {s.name: (s.merge, s.step) for s in all_specs() if s.kind is Kind.MULTI}
    assert multi == {
        b"mget": (Merge.ORDERED, 1),
        b"mset": (Merge.OK, 2),
        b"del": (Merge.SUM, 1),
        b"unlink": (Merge.SUM, 1),
        b"exists": (Merge.SUM, 1),
        b"touch": (Merge.SUM, 1),
    }
    assert all(s.merge is None for s in all_specs() if s.kind is not Kind.MULTI)


def test_every_refused_command_has_a_reason_naming_it() -> None:
    for spec in all_specs():
        if spec.kind is Kind.REFUSED:
            assert spec.reason, spec.name
            shown = spec.name.decode().replace("|", " ")
            assert shown.lower() in spec.reason.lower(), (spec.name, spec.reason)
            assert "\r" not in spec.reason and "\n" not in spec.reason
        else:
            assert spec.reason == "", spec.name


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("get", Kind.KEYED), ("set", Kind.KEYED), ("hset", Kind.KEYED), ("lpush", Kind.KEYED),
        ("expire", Kind.KEYED), ("object|encoding", Kind.KEYED), ("object|freq", Kind.KEYED),
        ("memory|usage", Kind.KEYED), ("xinfo|stream", Kind.KEYED), ("xgroup|create", Kind.KEYED),
        ("bitfield", Kind.KEYED), ("bitfield_ro", Kind.KEYED), ("sort_ro", Kind.KEYED),
        ("georadius_ro", Kind.KEYED), ("dump", Kind.KEYED), ("restore", Kind.KEYED),
        ("rename", Kind.SAME_SLOT), ("smove", Kind.SAME_SLOT), ("sinterstore", Kind.SAME_SLOT),
        ("zunionstore", Kind.SAME_SLOT), ("lmove", Kind.SAME_SLOT), ("msetnx", Kind.SAME_SLOT),
        ("sdiffstore", Kind.SAME_SLOT), ("bitop", Kind.SAME_SLOT), ("pfmerge", Kind.SAME_SLOT),
        ("copy", Kind.SAME_SLOT), ("georadius", Kind.SAME_SLOT), ("sort", Kind.SAME_SLOT),
        ("eval", Kind.SAME_SLOT), ("evalsha", Kind.SAME_SLOT), ("eval_ro", Kind.SAME_SLOT),
        ("fcall", Kind.SAME_SLOT), ("fcall_ro", Kind.SAME_SLOT), ("xread", Kind.BLOCKING),
        ("xreadgroup", Kind.BLOCKING), ("lcs", Kind.SAME_SLOT), ("pfcount", Kind.SAME_SLOT),
        ("sinter", Kind.SAME_SLOT), ("lmpop", Kind.SAME_SLOT), ("sintercard", Kind.SAME_SLOT),
        ("ping", Kind.PROXY), ("echo", Kind.PROXY), ("quit", Kind.PROXY), ("auth", Kind.PROXY),
        ("select", Kind.PROXY), ("hello", Kind.PROXY), ("reset", Kind.PROXY), ("info", Kind.PROXY),
        ("dbsize", Kind.PROXY), ("flushdb", Kind.PROXY), ("flushall", Kind.PROXY), ("keys", Kind.PROXY),
        ("scan", Kind.PROXY), ("randomkey", Kind.PROXY), ("time", Kind.PROXY), ("command", Kind.PROXY),
        ("command|count", Kind.PROXY), ("command|getkeys", Kind.PROXY), ("client|setname", Kind.PROXY),
        ("client|getname", Kind.PROXY), ("client|id", Kind.PROXY), ("script|load", Kind.PROXY),
        ("script|exists", Kind.PROXY), ("script|flush", Kind.PROXY), ("slowlog|get", Kind.PROXY),
        ("slowlog|len", Kind.PROXY), ("slowlog|reset", Kind.PROXY), ("object|help", Kind.PROXY),
        ("blpop", Kind.BLOCKING), ("brpop", Kind.BLOCKING), ("blmove", Kind.BLOCKING),
        ("brpoplpush", Kind.BLOCKING), ("bzpopmin", Kind.BLOCKING), ("bzpopmax", Kind.BLOCKING),
        ("blmpop", Kind.BLOCKING), ("bzmpop", Kind.BLOCKING), ("multi", Kind.TRANSACTION),
        ("exec", Kind.TRANSACTION), ("discard", Kind.TRANSACTION), ("watch", Kind.TRANSACTION),
        ("unwatch", Kind.TRANSACTION), ("subscribe", Kind.PUBSUB), ("psubscribe", Kind.PUBSUB),
        ("ssubscribe", Kind.PUBSUB), ("unsubscribe", Kind.PUBSUB), ("publish", Kind.PUBSUB),
        ("spublish", Kind.PUBSUB), ("pubsub|channels", Kind.PUBSUB), ("pubsub|numpat", Kind.PUBSUB),
        ("pubsub|help", Kind.PROXY), ("monitor", Kind.PROXY), ("replicaof", Kind.REFUSED),
        ("slaveof", Kind.REFUSED), ("sync", Kind.REFUSED), ("psync", Kind.REFUSED),
        ("cluster|info", Kind.REFUSED), ("readonly", Kind.REFUSED), ("readwrite", Kind.REFUSED),
        ("asking", Kind.REFUSED), ("config|get", Kind.PROXY), ("save", Kind.REFUSED),
        ("bgsave", Kind.REFUSED), ("bgrewriteaof", Kind.REFUSED), ("shutdown", Kind.REFUSED),
        ("debug", Kind.REFUSED), ("failover", Kind.REFUSED), ("module|list", Kind.REFUSED),
        ("acl|whoami", Kind.PROXY), ("acl|setuser", Kind.REFUSED), ("latency|latest", Kind.PROXY),
        ("memory|doctor", Kind.PROXY),
        ("memory|stats", Kind.PROXY), ("memory|purge", Kind.REFUSED), ("swapdb", Kind.REFUSED),
        ("move", Kind.REFUSED), ("wait", Kind.REFUSED), ("client|kill", Kind.PROXY),
        ("client|pause", Kind.REFUSED), ("client|tracking", Kind.REFUSED), ("function|load", Kind.PROXY),
        ("function|delete", Kind.PROXY), ("migrate", Kind.REFUSED), ("lolwut", Kind.REFUSED),
        ("lastsave", Kind.PROXY), ("latency|doctor", Kind.REFUSED), ("script|kill", Kind.PROXY),
        ("restore-asking", Kind.REFUSED),
    ],
)  # fmt: skip
def test_classification(name: str, kind: Kind) -> None:
    assert _spec(name).kind is kind


def test_every_command_redis_flags_blocking_is_served_as_blocking() -> None:
    blocking = {s.name for s in all_specs() if "blocking" in s.flags}
    assert blocking == {s.name for s in all_specs() if s.kind is Kind.BLOCKING}
    for spec in all_specs():
        if spec.kind is Kind.BLOCKING:
            assert spec._fixed != (), spec.name  # keys, which must share a slot


def test_keyed_commands_have_exactly_one_key_at_a_fixed_position() -> None:
    for spec in all_specs():
        if spec.kind is Kind.KEYED:
            args = [spec.name] + [b"arg%d" % i for i in range(1, abs(spec.arity))]
            assert check_arity(spec, len(args))
            assert len(key_indexes(spec, args)) == 1, spec.name


def test_same_slot_commands_have_keys() -> None:
    for spec in all_specs():
        if spec.kind is Kind.SAME_SLOT:
            assert spec._fixed != (), spec.name


def test_bare_containers_fail_the_arity_check_except_command() -> None:
    for spec in all_specs():
        if spec.name in (b"object", b"client", b"xinfo", b"config", b"memory"):
            assert not check_arity(spec, 1)
            assert spec.kind is Kind.REFUSED
    command = lookup([b"COMMAND"])
    assert command is not None and command.kind is Kind.PROXY and check_arity(command, 1)


def test_forward_any_commands_are_proxy_help_subcommands() -> None:
    for name in FORWARD_ANY:
        spec = lookup(name.split(b"|"))
        assert spec is not None and spec.kind is Kind.PROXY and name.endswith(b"|help")


# --- lookup -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("GET k", "get"), ("get k", "get"), ("Get k", "get"), ("gEt k", "get"), ("MSET a 1", "mset"),
        ("OBJECT ENCODING k", "object|encoding"), ("object encoding k", "object|encoding"),
        ("Object Freq k", "object|freq"), ("XINFO STREAM s", "xinfo|stream"),
        ("xinfo groups s", "xinfo|groups"), ("MEMORY USAGE k", "memory|usage"),
        ("CLIENT SETNAME n", "client|setname"), ("SCRIPT LOAD s", "script|load"),
        ("CONFIG GET x", "config|get"), ("COMMAND", "command"), ("command getkeys get k", "command|getkeys"),
        ("OBJECT", "object"), ("restore-asking k 0 v", "restore-asking"), ("XGROUP CREATE s g $", "xgroup|create"),
    ],
)  # fmt: skip
def test_lookup_is_case_insensitive_and_resolves_subcommands(line: str, name: str) -> None:
    spec = lookup(_args(line))
    assert spec is not None and spec.name == name.encode()


@pytest.mark.parametrize("line", ["NOSUCH", "nosuch k", "OBJECT NOSUCH k", "get\x00", "GETT k", "CLIENT x"])
def test_lookup_returns_none_for_unknown_commands_and_subcommands(line: str) -> None:
    assert lookup(_args(line)) is None


def test_lookup_finds_every_spec_by_its_own_name() -> None:
    for spec in all_specs():
        assert lookup(spec.name.split(b"|")) is spec
        assert lookup(spec.name.upper().split(b"|")) is spec


def test_a_plain_command_ignores_a_second_word_that_looks_like_a_subcommand() -> None:
    spec = lookup([b"GET", b"encoding"])
    assert spec is not None and spec.name == b"get"


# --- arity ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "ok"),
    [
        ("GET", False), ("GET k", True), ("GET k x", False), ("SET k", False), ("SET k v", True),
        ("SET k v EX 10", True), ("MGET", False), ("MGET a", True), ("MGET a b c", True),
        ("MSET", False), ("MSET a", False), ("MSET a 1", True), ("MSET a 1 b", False), ("MSET a 1 b 2", True),
        ("MSETNX a 1 b", True),  # not split: Redis itself rejects the dangling key, atomically
        ("DEL", False), ("DEL a", True), ("PING", True), ("PING x", True), ("PING x y", True),
        ("OBJECT", False), ("OBJECT ENCODING", False), ("OBJECT ENCODING k", True),
        ("OBJECT ENCODING k x", False), ("COMMAND", True), ("EVAL s", False), ("EVAL s 0", True),
        ("ZUNIONSTORE d 1", False), ("ZUNIONSTORE d 1 a", True), ("XREAD STREAMS a", False),
        ("XREAD STREAMS a 0", True), ("HSET h f", False), ("HSET h f v", True), ("LCS a", False),
    ],
)  # fmt: skip
def test_check_arity(line: str, ok: bool) -> None:
    args = _args(line)
    spec = lookup(args)
    assert spec is not None
    assert check_arity(spec, len(args)) is ok


def test_arity_error_names_the_full_command_like_redis() -> None:
    assert arity_error(_spec("get")) == b"ERR wrong number of arguments for 'get' command"
    assert arity_error(_spec("object|encoding")) == (
        b"ERR wrong number of arguments for 'object|encoding' command"
    )


def test_unknown_command_error_like_redis() -> None:
    assert unknown_command_error([b"nosuch", b"a", b"b\nc"]) == (
        b"ERR unknown command 'nosuch', with args beginning with: 'a' 'b c' "
    )
    assert unknown_command_error([b"nosuch"]) == b"ERR unknown command 'nosuch', with args beginning with: "
    assert unknown_command_error([b"object", b"bogus"]) == b"ERR unknown subcommand 'bogus'. Try OBJECT HELP."
    long = unknown_command_error([b"x", b"a" * 200, b"b"])
    assert long == b"ERR unknown command 'x', with args beginning with: '" + b"a" * 128 + b"' "


# --- key positions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "keys"),
    [
        ("GET k", [1]), ("SET k v GET", [1]), ("OBJECT ENCODING k", [2]), ("MEMORY USAGE k SAMPLES 5", [2]),
        ("XINFO STREAM s FULL", [2]), ("MGET a b c", [1, 2, 3]), ("MSET a 1 b 2", [1, 3]),
        ("DEL a b", [1, 2]), ("RENAME a b", [1, 2]), ("SINTERSTORE d a b", [1, 2, 3]),
        ("BITOP AND d a b", [2, 3, 4]), ("LCS a b", [1, 2]), ("BLPOP a b 0", [1, 2]),
        ("EVAL s 2 a b x y", [3, 4]), ("EVAL s 0", []), ("EVAL s 0 x", []), ("FCALL f 1 a x", [3]),
        ("EVALSHA s 01 a", [3]),  # Redis's getkeys parses numkeys with atoi; EVALSHA itself then fails
        ("ZUNIONSTORE d 2 a b WEIGHTS 1 2", [1, 3, 4]), ("ZUNION 2 a b", [2, 3]),
        ("ZINTERCARD 2 a b LIMIT 1", [2, 3]), ("SINTERCARD 1 a", [2]), ("LMPOP 2 a b LEFT", [2, 3]),
        ("BLMPOP 0 2 a b LEFT", [3, 4]), ("ZMPOP 1 a MIN", [2]),
        ("XREAD COUNT 2 STREAMS a b 0 0", [4, 5]), ("XREAD STREAMS streams 0", [2]),
        ("XREADGROUP GROUP g c STREAMS s 0", [5]), ("SORT k", [1]), ("SORT k STORE d", [1, 3]),
        ("SORT k BY w_* GET # STORE d", [1, 7]), ("SORT k STORE d STORE e", [1, 5]), ("SORT_RO k BY x", [1]),
        ("GEORADIUS k 0 0 1 m STORE d", [1, 7]), ("GEORADIUS k 0 0 1 m", [1]),
        ("GEORADIUSBYMEMBER k m 1 km STOREDIST d", [1, 6]), ("MIGRATE h 1 k 0 5", [3]),
        ("MIGRATE h 1 '' 0 5 KEYS a b", [7, 8]), ("MIGRATE h 1 '' 0 5 AUTH keys KEYS a", [9]),
        ("MIGRATE h 1 '' 0 5 AUTH2 u keys KEYS a", [10]), ("BITFIELD_RO k GET u8 0", [1]),
        ("XGROUP CREATE s g $ MKSTREAM", [2]), ("PFCOUNT a b", [1, 2]), ("PING", []), ("SPUBLISH c m", []),
    ],
)  # fmt: skip
def test_key_indexes(line: str, keys: list[int]) -> None:
    args = _args(line)
    spec = lookup(args)
    assert spec is not None and check_arity(spec, len(args))
    assert key_indexes(spec, args) == keys


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("EVAL s 3 a", "ERR Number of keys can't be greater than number of args"),
        ("EVAL s -1 a", "ERR Number of keys can't be negative"),
        ("EVAL s x a", "ERR value is not an integer or out of range"),
        ("FCALL f x a", "ERR Bad number of keys provided"),
        ("ZUNIONSTORE d 0 a", "ERR at least 1 input key is needed for 'zunionstore' command"),
        ("ZUNIONSTORE d 3 a", "ERR syntax error"),
        ("ZUNION x a", "ERR value is not an integer or out of range"),
        ("SINTERCARD 0 a", "ERR numkeys should be greater than 0"),
        ("SINTERCARD 2 a", "ERR Number of keys can't be greater than number of args"),
        ("LMPOP 3 a LEFT", "ERR syntax error"),
        ("XREAD COUNT 1 STREAMS a", "ERR Unbalanced XREAD list of streams: for each stream key an ID or '$' "
                                    "must be specified."),
        ("XREAD COUNT 1 a b", "ERR syntax error"),
        ("MIGRATE h 1 k 0 5 KEYS a", "ERR When using MIGRATE KEYS option, the key argument must be set to "
                                     "the empty string"),
    ],
)  # fmt: skip
def test_key_indexes_raises_the_commands_own_error_when_keys_cannot_be_found(line: str, message: str) -> None:
    args = _args(line)
    spec = lookup(args)
    assert spec is not None and check_arity(spec, len(args))
    with pytest.raises(CommandError) as exc:
        key_indexes(spec, args)
    assert str(exc.value) == message


def test_key_indexes_returns_a_fresh_list_each_time() -> None:
    spec = _spec("get")
    first = key_indexes(spec, [b"get", b"k"])
    first.append(99)
    assert key_indexes(spec, [b"get", b"k"]) == [1]


def test_keyword_search_matches_like_strcasecmp() -> None:
    """Redis compares C strings: "STREAMS\\0junk" is the keyword, "STREAMSX" is not."""
    spec = _spec("xread")
    assert key_indexes(spec, [b"xread", b"streams\x00junk", b"a", b"0"]) == [2]
    with pytest.raises(CommandError):
        key_indexes(spec, [b"xread", b"streamsx", b"a", b"0"])


# --- the generated docs -----------------------------------------------------------------------------


def test_readme_command_list_is_up_to_date() -> None:
    """README.md's supported-commands list is regenerated with tools/gen_readme_commands.py too."""
    tool = load_tool("gen_readme_commands")
    readme = (ROOT / "README.md").read_text()
    assert tool.readme_with_block(readme) == readme


def test_docs_commands_md_is_up_to_date() -> None:
    """docs/commands.md is regenerated with tools/gen_readme_commands.py whenever the table changes."""
    assert (ROOT / "docs" / "commands.md").read_text() == load_tool("gen_readme_commands").render()
