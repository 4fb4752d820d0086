"""The proxy's users: AUTH against the users record, each user's ACL rules compiled, routes per user.

A session holds its user's :class:`Permissions` (``session.user``) and, when that user is restricted
in any way, the same object in ``session.acl`` (None otherwise: the default user and users with
every command, key and channel cost nothing). Sessions take requests off the compiled fast path as
follows (``UserDirectory.routes_for``):

- unrestricted: the worker's shared routes;
- commands restricted, every key allowed: a routes table of this user (rules version), holding only
  the commands it may run; any other command misses it and is refused in ``Session._slow``;
- keys restricted, or a requests-per-second limit: no routes at all, every request goes to
  ``Session._slow``, where keys (and channels, and the rate) are checked.

Transactions, blocking commands, pub/sub and scripts always take ``Session._slow``, so their keys
and channels are checked there too. A change of the users record applies at once to the connected
sessions of each user whose rules changed (their routes switch); removing a user disconnects its
sessions, as Redis's ACL DELUSER does.
"""

from __future__ import annotations

import functools
import hmac
import re
from typing import TYPE_CHECKING

import structlog

from kvstore_cluster.users import CATEGORIES, DEFAULT, User, Users, hash_password
from kvstore_proxy import commands, resp
from kvstore_proxy.commands import CommandSpec, Kind

if TYPE_CHECKING:
    from kvstore_proxy.server import Route, Worker

log = structlog.get_logger("kvstore.proxy.acl")

NOPERM_KEY = resp.error("NOPERM this user has no permissions to access one of the keys used as arguments")
NOPERM_CHANNEL = resp.error("NOPERM this user has no permissions to access one of the channels used as arguments")
_CHANNEL_ARGS = frozenset({b"subscribe", b"ssubscribe"})
_PUBLISH = frozenset({b"publish", b"spublish"})


def noperm_command(spec: CommandSpec) -> bytes:
    return b"-NOPERM this user has no permissions to run the '" + spec.name + b"' command\r\n"


@functools.lru_cache(maxsize=4096)
def glob(pattern: bytes) -> re.Pattern[bytes]:
    """Redis's glob (stringmatchlen: ``*``, ``?``, ``[...]`` with ``^`` and ranges, ``\\`` escapes) as a regex."""
    out: list[bytes] = []
    i, n = 0, len(pattern)
    esc = lambda c: re.escape(bytes([c]))  # noqa: E731
    while i < n:
        c = pattern[i]
        if c == 42:  # *
            out.append(b".*")
        elif c == 63:  # ?
            out.append(b".")
        elif c == 91:  # [
            j = i + 1
            negate = j < n and pattern[j] == 94  # ^
            j += negate
            items: list[bytes] = []
            while j < n and pattern[j] != 93:  # ]
                if pattern[j] == 92 and j + 1 < n:  # \
                    items.append(esc(pattern[j + 1]))
                    j += 2
                elif j + 2 < n and pattern[j + 1] == 45:  # a-z (reversed ranges allowed, as in Redis)
                    lo, hi = sorted((pattern[j], pattern[j + 2]))
                    items.append(esc(lo) + b"-" + esc(hi))
                    j += 3
                else:
                    items.append(esc(pattern[j]))
                    j += 1
            i = j
            body = b"".join(items)
            out.append((b"[^" + body + b"]" if body else b"[\\s\\S]") if negate else
                       (b"[" + body + b"]" if body else b"(?!)"))
        elif c == 92 and i + 1 < n:
            i += 1
            out.append(esc(pattern[i]))
        else:
            out.append(esc(c))
        i += 1
    return re.compile(b"".join(out), re.DOTALL)


def glob_match(pattern: bytes, text: bytes) -> bool:
    return glob(pattern).fullmatch(text) is not None


@functools.lru_cache(maxsize=1)
def _all_names() -> frozenset[bytes]:
    return frozenset(spec.name for spec in commands.all_specs())


def _command_names(rule: str) -> frozenset[bytes]:
    """What ``+rule``/``-rule`` (without its sign) covers: a category, a command and its subcommands, a subcommand."""
    if rule == "@all":
        return _all_names()
    if rule.startswith("@"):
        return frozenset(s.name for s in commands.all_specs() if rule[1:] in s.acl_categories)
    name = rule.encode()
    if b"|" in name:
        return frozenset({name}) & _all_names()
    return frozenset(n for n in _all_names() if n == name or n.startswith(name + b"|"))


def allowed_commands(rules: tuple[str, ...]) -> frozenset[bytes] | None:
    """The commands ``rules`` allow, applied in order from none; None for every command."""
    allowed: set[bytes] = set()
    for rule in rules:
        names = _command_names(rule[1:])
        if not names and not rule[1:].startswith("@"):
            log.warning("acl_unknown_command", rule=rule)
        if rule[0] == "+":
            allowed |= names
        else:
            allowed -= names
    return None if allowed >= _all_names() else frozenset(allowed)


class Permissions:
    """One user's compiled rules; a new object for each version of them (routes are keyed by it)."""

    __slots__ = ("name", "enabled", "nopass", "passwords", "user", "commands", "keys", "channels", "channel_patterns",
                 "max_connections", "max_rps", "restricted", "slow")

    def __init__(self, user: User, nopass: bool = False):
        self.user = user
        self.name = user.name
        self.enabled = user.enabled
        self.nopass = nopass
        self.passwords = user.passwords
        self.commands = allowed_commands(user.commands)
        self.keys = None if "*" in user.keys else tuple(glob(p.encode()) for p in user.keys)
        self.channels = None if "*" in user.channels else tuple(glob(p.encode()) for p in user.channels)
        self.channel_patterns = frozenset(p.encode() for p in user.channels)
        self.max_connections = user.max_connections
        self.max_rps = user.max_rps
        self.restricted = self.commands is not None or self.keys is not None or self.channels is not None
        # Every request of its sessions must reach Session._slow: keys to check, or a rate to count.
        self.slow = self.keys is not None or self.max_rps is not None

    def accepts(self, password: bytes) -> bool:
        if self.nopass:
            return True
        digest = hash_password(password)
        return any(hmac.compare_digest(digest, h) for h in self.passwords)

    def refusal(self, spec: CommandSpec, args: list[bytes]) -> bytes | None:
        """The -NOPERM reply if this user may not run ``args`` (command, keys, channels); None if it may."""
        if self.commands is not None and spec.name not in self.commands and "no_auth" not in spec.flags:
            return noperm_command(spec)
        if self.keys is not None:
            try:
                positions = commands.key_indexes(spec, args)
            except commands.CommandError:
                positions = []  # malformed: the command's own error follows
            for i in positions:
                if not any(p.fullmatch(args[i]) for p in self.keys):
                    return NOPERM_KEY
        if self.channels is not None and spec.kind is Kind.PUBSUB:
            name = spec.name
            if name in _CHANNEL_ARGS or name in _PUBLISH:
                for channel in args[1:] if name in _CHANNEL_ARGS else args[1:2]:
                    if not any(p.fullmatch(channel) for p in self.channels):
                        return NOPERM_CHANNEL
            elif name == b"psubscribe":
                # A pattern subscription must be one of the user's patterns, literally (as in Redis).
                if any(p not in self.channel_patterns for p in args[1:]):
                    return NOPERM_CHANNEL
        return None

    def describe(self) -> str:
        return self.user.describe(self.nopass)


class UserDirectory:
    """A worker's users (from the record, plus ``default`` from --requirepass) and their routes tables."""

    def __init__(self, worker: Worker):
        self.worker = worker
        password = worker.config.requirepass
        self._default = Permissions(
            User(DEFAULT, passwords=(hash_password(password.encode()),) if password else (),
                 commands=("+@all",), keys=("*",), channels=("*",)),
            nopass=not password)
        self.by_name: dict[str, Permissions] = {DEFAULT: self._default}
        self.record: Users = Users()
        self._routes: dict[Permissions, dict[bytes, Route]] = {}

    @property
    def default(self) -> Permissions:
        return self.by_name[DEFAULT]

    def authenticate(self, name: bytes, password: bytes) -> Permissions | None:
        perms = self.by_name.get(name.decode(errors="replace"))
        if perms is None or not perms.enabled or not perms.accepts(password):
            return None
        return perms

    # --- routes -------------------------------------------------------------------------------

    def routes_for(self, perms: Permissions) -> dict[bytes, Route]:
        if perms.slow:
            return {}
        if perms.commands is None:
            return self.worker.routes
        table = self._routes.get(perms)
        if table is None:
            table = self._routes[perms] = {n: r for n, r in self.worker.routes.items()
                                           if r.spec.name in perms.commands}
        return table

    def learn(self, name: bytes, route: Route) -> None:
        """A route the worker learned: every user table whose user may run it learns it too."""
        for perms, table in self._routes.items():
            if route.spec.name in perms.commands:  # type: ignore[operator]
                table[name] = route

    def forget_routes(self) -> None:
        """MONITOR attached: every table emptied in place (they fill again once it ends)."""
        for table in self._routes.values():
            table.clear()

    # --- the record ---------------------------------------------------------------------------

    def apply(self, record: Users) -> None:
        """A new users record: compile what changed, move connected sessions to their user's new rules."""
        by_name: dict[str, Permissions] = {DEFAULT: self._default}
        for name, user in record.users.items():
            old = self.by_name.get(name)
            by_name[name] = old if old is not None and old.user == user and old is not self._default \
                else Permissions(user)
        changed = {n for n in set(by_name) | set(self.by_name) if by_name.get(n) is not self.by_name.get(n)}
        self.by_name, self.record = by_name, record
        self._routes = {p: t for p, t in self._routes.items() if by_name.get(p.name) is p}
        if not changed:
            return
        log.info("users_applied", users=len(record.users), changed=sorted(changed))
        for s in list(self.worker.clients.values()):
            name = s.user.name
            if name not in changed:
                continue
            perms = by_name.get(name)
            if perms is None:
                s.close()  # the user was removed: its clients go, as with ACL DELUSER
            else:
                s.set_user(perms)

    # --- ACL WHOAMI / CAT / LIST / USERS --------------------------------------------------------

    def list_lines(self) -> list[bytes]:
        return [self.by_name[n].describe().encode() for n in sorted(self.by_name)]


def acl_cat(args: list[bytes]) -> bytes | None:
    """ACL CAT [category]: the categories, or the commands in one; None for an unknown category."""
    if len(args) == 2:
        return resp.array([resp.bulk(c.encode()) for c in CATEGORIES])
    cat = args[2].decode(errors="replace").lower()
    if cat not in CATEGORIES:
        return None
    return resp.array([resp.bulk(s.name) for s in commands.all_specs() if cat in s.acl_categories])
