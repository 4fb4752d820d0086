"""The command table: every Redis 7.0 command, how the proxy serves it, and where its keys are."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class CommandError(Exception):
    """The arguments are malformed so the keys can't be found; ``str(exc)`` is the error line, ``ERR ...``."""


class Kind(enum.IntEnum):
    """How the proxy serves a command.

    Decisions the data alone doesn't make:

    - Check arity before kind, as Redis does: a container looked up without its subcommand
      (``OBJECT``) has arity -2 and fails it; only bare ``COMMAND`` passes.
    - XREAD and XREADGROUP are BLOCKING like BLPOP: only their BLOCK option blocks, so without it
      blocking.py forwards them like any SAME_SLOT command.
    - Left to run time: SELECT with a non-zero db, COPY ... DB n, EVAL/EVALSHA/FCALL with zero keys
      (SAME_SLOT, ``key_indexes`` returns ``[]``), and SORT's BY/GET patterns, which read keys the
      sorted key's group may not hold (Redis Cluster refuses them too).
    - SCRIPT and FUNCTION are PROXY: scripts and libraries are kept on every group, including
      groups added later (scripting.py); FCALL is SAME_SLOT like EVAL.
    - CONFIG is PROXY: GET asks the groups' masters, SET sets data-path tunables on every node
      (configcmd.py).
    - The HELP subcommands of containers the proxy serves are PROXY and listed in ``FORWARD_ANY``:
      their reply is static text, so any group's master can answer.
    - MIGRATE, MOVE, SWAPDB, WAIT, ROLE, LOLWUT, CLIENT PAUSE/UNBLOCK/TRACKING/...,
      MEMORY PURGE/MALLOC-STATS, LATENCY DOCTOR/GRAPH, SCRIPT KILL/DEBUG are refused: each is about
      one redis-server, not the keyspace the proxy presents. INFO, MONITOR, LATENCY LATEST/HISTORY/
      RESET/HISTOGRAM, MEMORY STATS/DOCTOR and LASTSAVE answer for the whole proxy (inspection.py).
    """

    KEYED = 1  # exactly one key, always at the same position: route by its slot
    MULTI = 2  # split by group and merged: MGET MSET DEL UNLINK EXISTS TOUCH
    SAME_SLOT = 3  # keys (any number) that must all hash to one slot, else -CROSSSLOT
    PROXY = 4  # answered or fanned out by the proxy itself
    REFUSED = 5  # refused with ``reason``
    BLOCKING = 6  # keys in one slot, served on a connection leased while the client waits (blocking.py)
    TRANSACTION = 7  # MULTI EXEC DISCARD WATCH UNWATCH (transactions.py)
    PUBSUB = 8  # (P|S)SUBSCRIBE and their UNSUBSCRIBE, (S)PUBLISH, PUBSUB ... (pubsub.py)


class Merge(enum.IntEnum):
    """How the replies of a split MULTI command are merged."""

    ORDERED = 1  # MGET: one reply per key, in request order
    OK = 2  # MSET: +OK if all parts OK
    SUM = 3  # DEL UNLINK EXISTS TOUCH: integer sum


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command or subcommand: Redis's facts about it and the proxy's treatment."""

    name: bytes  # lowercase, b"get", b"object|encoding"
    arity: int  # Redis convention: N exact, -N at least N (counting the command name)
    kind: Kind
    flags: frozenset[str]  # from COMMAND: write, readonly, denyoom, movablekeys, ...
    merge: Merge | None = None
    step: int = 1  # MULTI: args per key (MSET 2)
    reason: str = ""  # REFUSED: the error text, without the "ERR " prefix
    acl_categories: frozenset[str] = frozenset()
    group: str = ""  # COMMAND DOCS group and summary, for docs/commands.md
    summary: str = ""
    # Key positions that are right for every argument list that passes check_arity; None when the
    # positions depend on the arguments and _keys must run.
    _fixed: tuple[int, ...] | None = field(default=None, repr=False, compare=False)
    _keys: Callable[[list[bytes]], list[int]] | None = field(default=None, repr=False, compare=False)

    @property
    def display_name(self) -> str:
        """``OBJECT ENCODING`` for ``object|encoding``."""
        return self.name.decode().upper().replace("|", " ")


# --- the proxy's own decisions on top of Redis's data ----------------------------------------------

_MULTI: dict[str, tuple[Merge, int]] = {
    "mget": (Merge.ORDERED, 1),
    "mset": (Merge.OK, 2),
    "del": (Merge.SUM, 1),
    "unlink": (Merge.SUM, 1),
    "exists": (Merge.SUM, 1),
    "touch": (Merge.SUM, 1),
}

_PROXY = frozenset(
    {
        "ping", "echo", "quit", "auth", "select", "hello", "reset", "time", "info",
        "dbsize", "flushdb", "flushall", "keys", "scan", "randomkey",
        "client|setname", "client|getname", "client|id", "client|list", "client|info",
        "command", "command|count", "command|info", "command|docs", "command|list",
        "command|getkeys", "command|getkeysandflags",
        "script|load", "script|exists", "script|flush", "script|kill",
        "function|load", "function|delete", "function|flush", "function|list", "function|dump",
        "function|restore", "function|stats", "function|kill",
        "config|get", "config|set", "config|resetstat", "config|rewrite",
        "client|kill", "client|reply", "client|no-evict", "client|unpause",
        "slowlog|get", "slowlog|len", "slowlog|reset",
        "monitor", "lastsave", "memory|stats", "memory|doctor",
        "latency|latest", "latency|history", "latency|reset", "latency|histogram",
        "acl|whoami", "acl|cat", "acl|list", "acl|users",
    }
)  # fmt: skip

FORWARD_ANY = frozenset(
    {
        b"client|help", b"command|help", b"script|help", b"slowlog|help", b"function|help", b"config|help",
        b"object|help", b"xinfo|help", b"xgroup|help", b"memory|help", b"latency|help", b"pubsub|help",
    }
)  # fmt: skip
"""PROXY commands whose reply doesn't depend on data or group: forward them to any group's master."""

_PROXY_ALL = _PROXY | {n.decode() for n in FORWARD_ANY}

_NOT_SUPPORTED = "{} is not supported by kvstore-proxy"
_CLUSTER = _NOT_SUPPORTED + ": kvstore is not a Redis Cluster, the proxy routes keys itself"
_REPLICATION = _NOT_SUPPORTED + ": replication is managed by kvstore-sentinel and kvstore-admin"
_SERVER = _NOT_SUPPORTED + ": it is about one redis-server; run it on a group's server directly"
_DB = _NOT_SUPPORTED + ": only database 0 exists"
_CONNECTION = _NOT_SUPPORTED + ": proxy clients are not clients of a redis-server"
_TRACKING = _NOT_SUPPORTED + ": client-side caching (tracking) is not supported"

_BLOCKING = frozenset(
    {"blpop", "brpop", "blmove", "brpoplpush", "bzpopmin", "bzpopmax", "blmpop", "bzmpop", "xread", "xreadgroup"}
)
_TRANSACTION = frozenset({"multi", "exec", "discard", "watch", "unwatch"})
_PUBSUB = frozenset(
    {
        "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe",
        "publish", "spublish", "pubsub|channels", "pubsub|numsub", "pubsub|numpat",
        "pubsub|shardchannels", "pubsub|shardnumsub",
    }
)  # fmt: skip

# A container name here refuses every subcommand not classified otherwise.
_REFUSED: dict[str, str] = {
    **dict.fromkeys(["cluster", "readonly", "readwrite", "asking", "restore-asking"], _CLUSTER),
    **dict.fromkeys(
        ["replicaof", "slaveof", "sync", "psync", "replconf", "failover", "role"], _REPLICATION
    ),
    "wait": _NOT_SUPPORTED + ": each group replicates on its own, there is no cluster-wide offset",
    **dict.fromkeys(
        ["save", "bgsave", "bgrewriteaof", "shutdown", "debug", "module", "acl",
         "latency", "pfdebug", "pfselftest", "memory|purge", "memory|malloc-stats", "script|debug"],
        _SERVER,
    ),
    **dict.fromkeys(["swapdb", "move"], _DB),
    "migrate": _NOT_SUPPORTED + ": keys move between groups with kvstore-admin reshard",
    **dict.fromkeys(
        ["client|pause", "client|unblock"],
        _CONNECTION,
    ),
    **dict.fromkeys(
        ["client|tracking", "client|trackinginfo", "client|caching", "client|getredir"], _TRACKING
    ),
    "acl": _NOT_SUPPORTED + ": the proxy's users are managed with kvstore-admin user (ACL WHOAMI, CAT, LIST "
           "and USERS are answered)",
    "lolwut": _NOT_SUPPORTED,
}

# --- Redis's key finding, ported from db.c (7.0) ---------------------------------------------------
# COMMAND GETKEYS is the reference: the key specs first; when they fail (or are incomplete, unknown or
# have variable flags) the command's own getkeys function, which is not in COMMAND's output.

_INT32 = 1 << 32


def _i32(n: int) -> int:
    """C's wrap to int: key spec arithmetic is done in ints in db.c."""
    return (n + (1 << 31)) % _INT32 - (1 << 31)


def string2ll(s: bytes) -> int | None:
    """Redis's strict integer parse: no spaces, no '+', no leading zeros."""
    n = len(s)
    if n == 0 or n > 20:
        return None
    if s == b"0":
        return 0
    digits = s[1:] if s[0] == 45 else s  # '-'
    if not digits or not digits.isdigit() or digits[0] == 48:  # '0'
        return None
    value = int(digits)
    if s[0] == 45:
        return -value if value <= 1 << 63 else None
    return value if value < 1 << 63 else None


def _atoi(s: bytes) -> int:
    """C's atoi, which the getkeys functions use where the key specs use string2ll."""
    s = s.split(b"\0", 1)[0].lstrip(b" \t\n\v\f\r")
    sign = 1
    if s[:1] in (b"-", b"+"):
        sign = -1 if s[:1] == b"-" else 1
        s = s[1:]
    end = 0
    while end < len(s) and 48 <= s[end] <= 57:
        end += 1
    return _i32(sign * int(s[:end])) if end else 0


def _word(arg: bytes) -> bytes:
    """An argument as strcasecmp sees it: up to the first NUL, lowercased."""
    return arg.split(b"\0", 1)[0].lower() if b"\0" in arg else arg.lower()


# A compiled key spec maps args to the positions it finds (a range), _SKIP when its keyword is absent,
# or None where getKeysUsingKeySpecs gives up and Redis falls back to the command's getkeys function.
_SKIP = range(0)
_SpecKeys = Callable[[list[bytes]], "range | None"]


def _parse_numkeys(arg: bytes) -> int | None:
    if arg.isdigit() and arg[0] != 48 and len(arg) < 10:
        return int(arg)  # the usual small count; cannot wrap a C int
    numkeys = string2ll(arg)
    if numkeys is None or numkeys < 0:
        return None
    return _i32(numkeys)


def _compile_find(find: list[Any]) -> Callable[[int, list[bytes]], range | None]:
    if find[0] == "range":
        lastkey, step, limit = find[1], find[2], find[3]

        def find_range(first: int, args: list[bytes]) -> range | None:
            argc = len(args)
            if lastkey >= 0:
                last = first + lastkey
            elif not limit:
                last = argc + lastkey
            else:
                n = argc - first  # C division truncates towards zero
                last = first + ((n // limit if n >= 0 else -(-n // limit)) + lastkey)
            if last >= argc or last < first or first >= argc:
                return None
            return range(first, last + 1, step)

        return find_range
    if find[0] == "keynum":
        keynumidx, firstkey, step = find[1], find[2], find[3]

        def find_keynum(first: int, args: list[bytes]) -> range | None:
            argc = len(args)
            if keynumidx >= argc or first + keynumidx >= argc:
                return None
            numkeys = _parse_numkeys(args[first + keynumidx])
            if numkeys is None:
                return None
            first += firstkey
            last = _i32(first + numkeys - 1)
            if last >= argc or last < first or first >= argc:
                return None
            return range(first, last + 1, step)

        return find_keynum
    return lambda first, args: None


def _compile_spec(spec: dict[str, Any]) -> _SpecKeys:
    """One key spec as getKeysUsingKeySpecs reads it."""
    begin = spec["begin"]
    find = _compile_find(spec["find"])
    incomplete = "incomplete" in spec["flags"]
    if begin[0] == "index":
        pos = begin[1]
        if incomplete:
            return lambda args: None  # found or not, Redis falls back to the getkeys function
        return lambda args: find(pos, args)
    if begin[0] != "keyword":
        return lambda args: None
    keyword: bytes = begin[1].lower().encode()
    size = len(keyword)
    startfrom: int = begin[2]

    def spec_keys(args: list[bytes]) -> range | None:
        argc = len(args)
        if startfrom > 0:
            start, end = startfrom, argc - 1
        else:
            start, end = argc + startfrom, 1
        first = 0
        for i in range(start, end, 1 if start <= end else -1):
            if i >= argc or i < 1:
                break
            arg = args[i]
            # strcasecmp: equal up to the first NUL.
            if len(arg) == size or (len(arg) > size and arg[size] == 0):
                if arg[:size].lower() == keyword:
                    first = i + 1
                    break
        if not first:
            return _SKIP
        found = find(first, args)
        return None if incomplete else found

    return spec_keys


def _generic_getkeys(store: int, count: int, first: int) -> Callable[[list[bytes]], list[int]]:
    """genericGetKeys: ``numkeys`` at ``count``, keys from ``first``, an optional store key last."""

    def getkeys(args: list[bytes]) -> list[int]:
        num = _atoi(args[count])
        if num < 1 or num > len(args) - first:
            return []
        keys = list(range(first, first + num))
        if store:
            keys.append(store)
        return keys

    return getkeys


def _sort_getkeys(args: list[bytes]) -> list[int]:
    keys = [1]
    store = 0
    i = 2
    while i < len(args):
        word = _word(args[i])
        if word == b"limit":
            i += 2
        elif word in (b"get", b"by"):
            i += 1
        elif word == b"store" and i + 1 < len(args):
            # The last STORE wins, as in SORT itself.
            store = i + 1
        i += 1
    if store:
        keys.append(store)
    return keys


def _migrate_getkeys(args: list[bytes]) -> list[int]:
    first, num = 3, 1
    if len(args) > 6:
        i = 6
        while i < len(args):
            word = _word(args[i])
            if word == b"keys":
                if args[3]:
                    return []
                first = i + 1
                num = len(args) - first
                break
            if word == b"auth":
                i += 1
            elif word == b"auth2":
                i += 2
            i += 1
    return list(range(first, first + num))


def _georadius_getkeys(args: list[bytes]) -> list[int]:
    stored = -1
    i = 5
    while i < len(args):
        if _word(args[i]) in (b"store", b"storedist") and i + 1 < len(args):
            stored = i + 1
            i += 1
        i += 1
    return [1] if stored == -1 else [1, stored]


def _xread_streams_pos(args: list[bytes]) -> int:
    i = 1
    while i < len(args):
        word = _word(args[i])
        if word in (b"block", b"count"):
            i += 1
        elif word == b"group":
            i += 2
        elif word == b"streams":
            return i
        elif word != b"noack":
            break
        i += 1
    return -1


def _xread_getkeys(args: list[bytes]) -> list[int]:
    pos = _xread_streams_pos(args)
    num = len(args) - pos - 1
    if pos == -1 or num == 0 or num % 2:
        return []
    return list(range(pos + 1, pos + 1 + num // 2))


_GETKEYS: dict[str, Callable[[list[bytes]], list[int]]] = {
    **dict.fromkeys(
        ["eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro", "blmpop", "bzmpop"],
        _generic_getkeys(0, 2, 3),
    ),
    **dict.fromkeys(["zunionstore", "zinterstore", "zdiffstore"], _generic_getkeys(1, 2, 3)),
    **dict.fromkeys(
        ["zunion", "zinter", "zdiff", "zintercard", "sintercard", "lmpop", "zmpop"],
        _generic_getkeys(0, 1, 2),
    ),
    "sort": _sort_getkeys,
    "sort_ro": lambda args: [1],
    "migrate": _migrate_getkeys,
    "georadius": _georadius_getkeys,
    "georadiusbymember": _georadius_getkeys,
    "xread": _xread_getkeys,
    "xreadgroup": _xread_getkeys,
    "set": lambda args: [1],
    "bitfield": lambda args: [1],
}

# The getkeys functions above that always answer [1] whatever the arguments.
_ALWAYS_FIRST = frozenset({"sort_ro", "set", "bitfield"})

# --- the errors the commands themselves would reply when key finding fails -------------------------

_INT_ERROR = "ERR value is not an integer or out of range"
_TOO_MANY = "ERR Number of keys can't be greater than number of args"
_NEGATIVE = "ERR Number of keys can't be negative"
_NOT_POSITIVE = "ERR numkeys should be greater than 0"
_SYNTAX = "ERR syntax error"


def _numkeys_error(name: str, args: list[bytes], count: int) -> str:
    num = string2ll(args[count]) if count < len(args) else None
    available = len(args) - count - 1
    if name in ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"):
        if num is None:
            return "ERR Bad number of keys provided" if name.startswith("fcall") else _INT_ERROR
        return _NEGATIVE if num < 0 else _TOO_MANY
    if name in ("sintercard", "lmpop", "zmpop", "blmpop", "bzmpop"):
        if num is None or num < 1:
            return _NOT_POSITIVE
        return _TOO_MANY if name == "sintercard" else _SYNTAX
    if num is None:
        return _INT_ERROR
    if num < 1:
        return f"ERR at least 1 input key is needed for '{name}' command"
    return _SYNTAX if num > available else _INT_ERROR


def _keys_error(name: str, args: list[bytes]) -> str:
    if name in ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro", "blmpop", "bzmpop",
                "zunionstore", "zinterstore", "zdiffstore"):
        return _numkeys_error(name, args, 2)
    if name in ("zunion", "zinter", "zdiff", "zintercard", "sintercard", "lmpop", "zmpop"):
        return _numkeys_error(name, args, 1)
    if name in ("xread", "xreadgroup"):
        pos = _xread_streams_pos(args)
        if pos != -1 and (len(args) - pos - 1) % 2:
            return "ERR Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified."
        return _SYNTAX
    if name == "migrate":
        return "ERR When using MIGRATE KEYS option, the key argument must be set to the empty string"
    return _SYNTAX


def _make_keys(name: str, entry: dict[str, Any]) -> tuple[tuple[int, ...] | None, Callable | None]:
    """The fixed key positions of a command, or the function that finds them in its arguments."""
    key_specs = [s for s in entry["keys"] if "not_key" not in s["flags"]]
    proc = _GETKEYS.get(name)
    if not key_specs and proc is None:
        return (), None
    if name in _ALWAYS_FIRST:
        return (1,), None
    static = not any("variable_flags" in s["flags"] or "incomplete" in s["flags"] for s in key_specs) and all(
        s["begin"][0] == "index" and s["find"][0] == "range" and s["find"][3] == 0 for s in key_specs
    )
    if static and all(s["find"][1] >= 0 for s in key_specs):
        fixed = tuple(
            p
            for s in key_specs
            for p in range(s["begin"][1], s["begin"][1] + s["find"][1] + 1, s["find"][2])
        )
        # The specs are right for every argument list that passes the arity check.
        if max(fixed) < abs(entry["arity"]):
            return fixed, None

    if static and proc is None and all(s["find"][1] >= 0 for s in key_specs[:-1]):
        # Fixed keys, then one run to the end: SINTERSTORE dst key..., MGET key..., MSET key value ...
        head = tuple(p for s in key_specs[:-1] for p in range(s["begin"][1], s["begin"][1] + s["find"][1] + 1))
        first, lastkey, step = key_specs[-1]["begin"][1], key_specs[-1]["find"][1], key_specs[-1]["find"][2]
        if lastkey < 0 and (not head or max(head) < abs(entry["arity"])):

            def run_keys(args: list[bytes]) -> list[int]:
                last = len(args) + lastkey
                if last < first:
                    raise CommandError(_keys_error(name, args))
                return [*head, *range(first, last + 1, step)]

            return None, run_keys

    if any("variable_flags" in s["flags"] for s in key_specs):
        compiled: tuple[_SpecKeys, ...] = ()
    else:
        compiled = tuple(_compile_spec(s) for s in key_specs)
    no_mandatory = "no_mandatory_keys" in entry["flags"]
    numkeys_at = next(
        (s["begin"][1] + s["find"][1] for s in key_specs if s["find"][0] == "keynum" and s["begin"][0] == "index"),
        None,
    )

    def keys(args: list[bytes]) -> list[int]:
        found: list[int] | None = [] if compiled else None
        for spec_keys in compiled:
            positions = spec_keys(args)
            if positions is None:
                found = None
                break
            found += positions  # type: ignore[operator]
        if found is None:
            found = proc(args) if proc is not None else []
        if found:
            return found
        # Zero keys: fine for EVAL/FCALL with numkeys 0, else the command itself would fail.
        if no_mandatory and numkeys_at is not None and numkeys_at < len(args):
            if string2ll(args[numkeys_at]) == 0:
                return found
        raise CommandError(_keys_error(name, args))

    shape = [(s["begin"][0], s["find"][0], s["find"][1:]) for s in key_specs]
    if proc is not None and shape and shape[-1][:2] == ("index", "keynum") and shape[-1][2][1:] == [1, 1]:
        # EVAL, ZUNION, SINTERCARD, LMPOP... (and a fixed store key first, ZUNIONSTORE): the usual
        # small, valid numkeys without the general walk.
        if all(s[:2] == ("index", "range") and s[2][0] == 0 for s in shape[:-1]):
            head = tuple(s["begin"][1] for s in key_specs[:-1])
            count_at = key_specs[-1]["begin"][1] + key_specs[-1]["find"][1]
            first = key_specs[-1]["begin"][1] + key_specs[-1]["find"][2]
            general = keys

            def keynum_keys(args: list[bytes]) -> list[int]:
                arg = args[count_at]
                if arg.isdigit() and arg[0] != 48 and len(arg) < 10:
                    last = first + int(arg)
                    if last <= len(args):
                        return [*head, *range(first, last)]
                return general(args)

            return None, keynum_keys
    return None, keys


# --- building the table -----------------------------------------------------------------------------


def _reason_for(name: str) -> str | None:
    template = _REFUSED.get(name)
    if template is None and "|" in name:
        template = _REFUSED.get(name.split("|", 1)[0])
    if template is None:
        return None
    return template.format(name.upper().replace("|", " "))


def _classify(name: str, entry: dict[str, Any], fixed: tuple[int, ...] | None, has_keys: bool) -> dict:
    if name in _MULTI:
        merge, step = _MULTI[name]
        return {"kind": Kind.MULTI, "merge": merge, "step": step}
    if name in _PROXY_ALL:
        return {"kind": Kind.PROXY}
    if name in _BLOCKING:
        return {"kind": Kind.BLOCKING}
    if name in _TRANSACTION:
        return {"kind": Kind.TRANSACTION}
    if name in _PUBSUB:
        return {"kind": Kind.PUBSUB}
    reason = _reason_for(name)
    if reason is not None:
        return {"kind": Kind.REFUSED, "reason": reason}
    if has_keys:
        return {"kind": Kind.KEYED if fixed is not None and len(fixed) == 1 else Kind.SAME_SLOT}
    _UNDECIDED.add(name)
    return {"kind": Kind.REFUSED, "reason": _NOT_SUPPORTED.format(name.upper().replace("|", " "))}


# Keyless commands refused only because nobody decided otherwise; a test keeps this empty so that a
# regenerated command_data.json with new commands forces a decision.
_UNDECIDED: set[str] = set()


def _from_data(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The CommandSpec fields that come straight from the server's COMMAND data."""
    return {"name": name.encode(), "arity": entry["arity"], "flags": frozenset(entry["flags"]),
            "acl_categories": frozenset(entry["acl"]), "group": entry["group"], "summary": entry["summary"]}


def _build(data: dict[str, Any]) -> dict[str, CommandSpec]:
    commands: dict[str, dict[str, Any]] = data["commands"]
    specs: dict[str, CommandSpec] = {}
    for name, entry in commands.items():
        if "subcommands" in entry:
            continue
        fixed, keys = _make_keys(name, entry)
        has_keys = fixed != () or keys is not None
        specs[name] = CommandSpec(**_from_data(name, entry), _fixed=fixed, _keys=keys,
                                  **_classify(name, entry, fixed, has_keys))
    for name, entry in commands.items():
        if "subcommands" not in entry:
            continue
        subs = [specs[s] for s in entry["subcommands"]]
        if name in _PROXY_ALL:
            cls: dict[str, Any] = {"kind": Kind.PROXY}
        elif all(s.kind is Kind.REFUSED for s in subs):
            cls = {"kind": Kind.REFUSED, "reason": _reason_for(name) or subs[0].reason}
        else:
            # Bare, it fails the arity check; should kind be checked first, the reply is the same.
            cls = {"kind": Kind.REFUSED, "reason": f"wrong number of arguments for '{name}' command"}
        specs[name] = CommandSpec(**_from_data(name, entry), _fixed=(), **cls)
    return specs


def _load() -> dict[str, Any]:
    # Next to this file rather than importlib.resources: that fails while an editable install still
    # maps kvstore_proxy as a namespace package (made before it had an __init__.py).
    return json.loads(Path(__file__).with_name("command_data.json").read_text())


_DATA = _load()
REDIS_VERSION: str = _DATA["redis_version"]
_SPECS = _build(_DATA)

# Plain commands under both lowercase and uppercase names: most clients send one or the other, and an
# exact hit skips lower(). Containers map to (their own spec, {subcommand: spec}).
_BY_NAME: dict[bytes, CommandSpec] = {}
_CONTAINERS: dict[bytes, tuple[CommandSpec, dict[bytes, CommandSpec]]] = {}
for _name, _entry in _DATA["commands"].items():
    if "|" in _name:
        continue
    if "subcommands" in _entry:
        _CONTAINERS[_name.encode()] = (
            _SPECS[_name],
            {s.split("|", 1)[1].encode(): _SPECS[s] for s in _entry["subcommands"]},
        )
    else:
        _BY_NAME[_name.encode()] = _BY_NAME[_name.upper().encode()] = _SPECS[_name]
del _name, _entry


# --- the interface the proxy core calls on every request --------------------------------------------


def lookup(args: list[bytes]) -> CommandSpec | None:
    """The spec for a request, resolving ``OBJECT ENCODING``-style subcommands; None if unknown."""
    spec = _BY_NAME.get(args[0])
    if spec is not None:
        return spec
    name = args[0].lower()
    spec = _BY_NAME.get(name)
    if spec is not None:
        return spec
    container = _CONTAINERS.get(name)
    if container is None:
        return None
    if len(args) == 1:
        return container[0]
    return container[1].get(args[1].lower())


def check_arity(spec: CommandSpec, nargs: int) -> bool:
    """Redis's arity rule for ``nargs`` (the name included); split MSET also needs whole pairs."""
    arity = spec.arity
    if arity > 0:
        return nargs == arity
    if nargs < -arity:
        return False
    # A split MSET with a dangling key would be half applied before a group refused its part.
    return spec.step == 1 or (nargs - 1) % spec.step == 0


def key_indexes(spec: CommandSpec, args: list[bytes]) -> list[int]:
    """Positions in ``args`` of every key, as COMMAND GETKEYS finds them; raises CommandError."""
    fixed = spec._fixed
    if fixed is not None:
        return [*fixed]
    return spec._keys(args)  # type: ignore[misc]


def all_specs() -> list[CommandSpec]:
    """Every command, container and subcommand, sorted by name."""
    return [_SPECS[name] for name in sorted(_SPECS)]


def arity_error(spec: CommandSpec) -> bytes:
    """Redis's reply line when ``check_arity`` fails."""
    return b"ERR wrong number of arguments for '" + spec.name + b"' command"


def unknown_command_error(args: list[bytes]) -> bytes:
    """Redis's reply line when ``lookup`` returns None: unknown command, or unknown subcommand."""

    def clean(arg: bytes) -> bytes:
        # %s stops at NUL; newlines would break the protocol, so Redis turns them into spaces.
        return arg.split(b"\0", 1)[0].replace(b"\r", b" ").replace(b"\n", b" ")

    if len(args) > 1 and args[0].lower() in _CONTAINERS:
        return (b"ERR unknown subcommand '" + clean(args[1])[:128] + b"'. Try "
                + clean(args[0]).upper() + b" HELP.")
    shown = b""
    for arg in args[1:]:
        if len(shown) >= 128:
            break
        shown += b"'" + clean(arg)[: 128 - len(shown)] + b"' "
    return b"ERR unknown command '" + clean(args[0])[:128] + b"', with args beginning with: " + shown
