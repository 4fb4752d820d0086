"""The ``users`` record: the proxy's users, their password hashes and their ACL rules (Redis's syntax).

``{"format": 1, "users": {NAME: {"enabled": bool, "passwords": [sha256 hex...], "commands": [rule...],
"keys": [pattern...], "channels": [pattern...], "max_connections": N|null, "max_rps": N|null}}}``

Passwords are kept as Redis ACL keeps them (SHA-256 of the password, hex), so the record holds no
password. The rules are the part of Redis's ACL language applications need: ``on``/``off``,
``+@category``/``-@category``, ``+command``/``-command`` (``+config|get`` for a subcommand),
``allcommands``/``nocommands``, ``~pattern``/``allkeys``/``resetkeys``, ``&pattern``/
``allchannels``/``resetchannels``. Commands are kept in the order given, as Redis applies them;
the proxy turns them into the set of commands the user may run (kvstore_proxy/acl.py). A user
made here starts as Redis's ``ACL SETUSER name on``: no command, no key, no channel.

Limits (``max_connections``, ``max_rps``: requests per second) are the proxy's own; None is none.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Any

from kvstore_cluster import codec
from kvstore_cluster.codec import ModelError

# Redis 7.0's ACL categories (ACL CAT).
CATEGORIES = (
    "keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap", "hyperloglog",
    "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking", "dangerous", "connection",
    "transaction", "scripting",
)  # fmt: skip
DEFAULT = "default"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_COMMAND = re.compile(r"^[a-z0-9_-]+(\|[a-z0-9_-]+)?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def hash_password(password: bytes) -> str:
    """What Redis ACL stores for a password: its SHA-256, in hex."""
    return hashlib.sha256(password).hexdigest()


def check_user_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ModelError(f"bad user name {name!r}: use 1-64 letters, digits, '_', '.', '@', '-'")
    return name


def _command_rule(rule: str) -> str:
    """A ``+...``/``-...`` rule, normalised (lowercase); ModelError if it is not one the proxy knows."""
    sign, body = rule[0], rule[1:].lower()
    if body.startswith("@"):
        if body[1:] != "all" and body[1:] not in CATEGORIES:
            raise ModelError(f"unknown ACL category {body!r} in {rule!r} (known: @all, "
                             f"{', '.join('@' + c for c in CATEGORIES)})")
    elif not _COMMAND.match(body):
        raise ModelError(f"bad command rule {rule!r}: expected +command, -command, +command|subcommand or "
                         "+@category")
    return sign + body


def _pattern(text: str, rule: str) -> str:
    if not text:
        raise ModelError(f"empty pattern in {rule!r}")
    if any(ord(c) < 33 for c in text):
        raise ModelError(f"bad pattern in {rule!r}: no spaces or control characters")
    return text


@dataclass(frozen=True, slots=True)
class User:
    name: str
    enabled: bool = True
    passwords: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    max_connections: int | None = None
    max_rps: int | None = None

    def __post_init__(self) -> None:
        check_user_name(self.name)
        what = f"user {self.name!r}"
        for h in self.passwords:
            if not isinstance(h, str) or not _SHA256.match(h):
                raise ModelError(f"{what}: each password must be a SHA-256 hash in lowercase hex")
        for r in self.commands:
            if not isinstance(r, str) or r[:1] not in ("+", "-") or _command_rule(r) != r:
                raise ModelError(f"{what}: bad command rule {r!r}")
        for pats, rule in ((self.keys, "~"), (self.channels, "&")):
            for p in pats:
                if not isinstance(p, str):
                    raise ModelError(f"{what}: patterns must be strings")
                _pattern(p, rule + p)
        for limit in (self.max_connections, self.max_rps):
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
                raise ModelError(f"{what}: limits must be positive integers or null")

    def with_rules(self, rules: list[str] | tuple[str, ...]) -> User:
        """This user with Redis ACL ``rules`` applied in order (``ACL SETUSER`` semantics)."""
        enabled, commands = self.enabled, list(self.commands)
        keys, channels = list(self.keys), list(self.channels)
        for rule in rules:
            low = rule.lower()
            if low in ("on", "off"):
                enabled = low == "on"
            elif low in ("allcommands", "nocommands") or low in ("+@all", "-@all"):
                # Everything before is overridden: kept out, as Redis's ACL LIST shows it.
                commands = ["+@all" if low in ("allcommands", "+@all") else "-@all"]
            elif rule[:1] in ("+", "-") and len(rule) > 1:
                commands.append(_command_rule(rule))
            elif low == "allkeys" or rule == "~*":
                keys = ["*"]
            elif low == "resetkeys":
                keys = []
            elif rule.startswith("~"):
                pattern = _pattern(rule[1:], rule)
                if keys != ["*"] and pattern not in keys:
                    keys.append(pattern)
            elif low == "allchannels" or rule == "&*":
                channels = ["*"]
            elif low == "resetchannels":
                channels = []
            elif rule.startswith("&"):
                pattern = _pattern(rule[1:], rule)
                if channels != ["*"] and pattern not in channels:
                    channels.append(pattern)
            elif rule[:1] in (">", "<", "#", "!") or low in ("nopass", "resetpass"):
                raise ModelError(f"{rule!r}: passwords are set with --password-file (kvstore-admin user passwd)")
            elif rule.startswith("%"):
                raise ModelError(f"{rule!r}: read/write key permissions (%R~, %W~) are not supported; use ~pattern")
            else:
                raise ModelError(f"unknown ACL rule {rule!r}")
        return replace(self, enabled=enabled, commands=tuple(commands), keys=tuple(keys), channels=tuple(channels))

    def describe(self, nopass: bool = False) -> str:
        """The user as Redis 7.0's ``ACL LIST`` shows one (``user NAME on #HASH ~keys resetchannels &chans +rules``)."""
        parts = ["user", self.name, "on" if self.enabled else "off"]
        parts += ["nopass"] if nopass else [f"#{h}" for h in self.passwords]
        parts += [f"~{p}" for p in self.keys]
        parts += ["resetchannels"] + [f"&{p}" for p in self.channels] if self.channels != ("*",) else ["&*"]
        parts += list(self.commands) or ["-@all"]
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "passwords": list(self.passwords), "commands": list(self.commands),
                "keys": list(self.keys), "channels": list(self.channels),
                "max_connections": self.max_connections, "max_rps": self.max_rps}

    @classmethod
    def from_json(cls, name: str, obj: Any) -> User:
        what = f"users: user {name!r}"
        if not isinstance(obj, dict):
            raise ModelError(f"{what} must be a JSON object")
        lists = {}
        for key in ("passwords", "commands", "keys", "channels"):
            items = codec.field(obj, key, list, what)
            if not all(isinstance(x, str) for x in items):
                raise ModelError(f"{what}: {key} must be strings")
            lists[key] = tuple(items)
        try:
            return cls(name=check_user_name(name), enabled=codec.field(obj, "enabled", bool, what),
                       max_connections=codec.optional(obj, "max_connections", int, what),
                       max_rps=codec.optional(obj, "max_rps", int, what), **lists)
        except ModelError as exc:
            raise ModelError(f"users: {exc}") from None


@dataclass(frozen=True, slots=True)
class Users:
    users: dict[str, User] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, user in self.users.items():
            if user.name != name:
                raise ModelError(f"users: user {user.name!r} filed under {name!r}")

    def get(self, name: str) -> User | None:
        return self.users.get(name)

    def put(self, user: User) -> Users:
        return Users({**self.users, user.name: user})

    def without(self, name: str) -> Users:
        return Users({n: u for n, u in self.users.items() if n != name})

    def encode(self) -> bytes:
        return codec.dump_object({"users": {n: self.users[n].to_json() for n in sorted(self.users)}})

    @classmethod
    def decode(cls, raw: bytes | str) -> Users:
        obj = codec.load_object(raw, "users")
        items = codec.field(obj, "users", dict, "users")
        return cls({name: User.from_json(name, item) for name, item in items.items()})
