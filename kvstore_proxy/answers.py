"""Commands the proxy answers itself (PING, AUTH, HELLO, CLIENT, SLOWLOG, ...) and run-time refusals."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvstore_proxy import acl, clientcmd, commands, configcmd, fanout, inspection, resp, scripting
from kvstore_proxy.commands import CommandSpec

if TYPE_CHECKING:
    from kvstore_proxy.datapath import CommandStat
    from kvstore_proxy.session import Session

Handler = Callable[["Session", list[bytes], "CommandStat", float], "bytes | None"]

BEFORE_AUTH = frozenset({b"auth", b"hello", b"quit"})
_WRONGPASS = resp.error("WRONGPASS invalid username-password pair or user is disabled.")
_NOPASS = resp.error(
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?")
_NOT_INT = resp.error("ERR value is not an integer or out of range")
_SYNTAX = resp.error("ERR syntax error")


def _ping(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    if s.state is not None and s.protocol == 2 and s.state.subs is not None and s.state.subs.count():
        # A RESP2 subscriber gets PING's answer in the shape of a message, as Redis sends it.
        return resp.array([resp.bulk(b"pong"), resp.bulk(args[1] if len(args) > 1 else b"")])
    return resp.PONG if len(args) == 1 else resp.bulk(args[1])


def _echo(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    return resp.bulk(args[1])


def _quit(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> None:
    s.quit_after(s.answer(stat, args, t0, resp.OK))


def _check_password(s: Session, user: bytes | None, password: bytes) -> bytes | None:
    """None if accepted (the session is then ``user``'s), else the error reply.

    Users are the users record's (acl.py) plus ``default``, whose password is --requirepass.
    Without one the default user needs no password, as in Redis: ``AUTH <password>`` is a
    configuration mistake, but ``AUTH default <anything>`` (what redis-py sends as ``HELLO 3 AUTH
    default <password>``) is accepted.
    """
    users = s.worker.users
    if user is None:
        if users.default.nopass:
            return _NOPASS
        user = b"default"
    perms = users.authenticate(user, password)
    if perms is None:
        return _WRONGPASS
    return s.login(perms)


def _auth(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    if len(args) > 3:
        return _SYNTAX
    user, password = (None, args[1]) if len(args) == 2 else (args[1], args[2])
    return _check_password(s, user, password) or resp.OK


_NOAUTH_HELLO = resp.error(
    "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH "
    "<user> <pass> option can be used to authenticate the client and select the RESP protocol "
    "version at the same time")  # Redis 7.0's wording
_BAD_NAME = resp.error("ERR Client names cannot contain spaces, newlines or special characters.")


def _hello(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    """``HELLO [protover [AUTH user pass] [SETNAME name]]``, step by step as Redis 7.0 does it.

    Options take effect as they are read (a SETNAME before a failed AUTH sticks, an AUTH before
    a bad SETNAME authenticates); the protocol switches only once everything succeeded, and
    the reply is already in the new protocol: a map in RESP3, a flat array in RESP2.
    """
    version: int | None = 0
    if len(args) > 1:
        version = commands.string2ll(args[1])
        if version is None:
            return resp.error("ERR Protocol version is not an integer or out of range")
        if version not in (2, 3):
            return resp.error("NOPROTO unsupported protocol version")
    i = 2
    while i < len(args):
        opt = args[i].lower()
        more = len(args) - 1 - i
        if opt == b"auth" and more >= 2:
            err = _check_password(s, args[i + 1], args[i + 2])
            if err is not None:
                return err
            i += 3
        elif opt == b"setname" and more >= 1:
            if not _valid_name(args[i + 1]):
                return _BAD_NAME
            s.name = args[i + 1]
            i += 2
        else:
            return resp.error(f"ERR Syntax error in HELLO option '{args[i].decode(errors='replace')}'")
    if not s.authenticated:
        return _NOAUTH_HELLO
    if version and version != s.protocol:
        s.set_protocol(version)
    return s.enc.map([
        (resp.bulk(b"server"), resp.bulk(b"redis")),
        (resp.bulk(b"version"), resp.bulk(commands.REDIS_VERSION.encode())),
        (resp.bulk(b"proto"), resp.integer(s.protocol)),
        (resp.bulk(b"id"), resp.integer(s.id)),
        # "standalone": the proxy is one server to its clients; "cluster" would send cluster-aware
        # clients looking for CLUSTER SLOTS, which the proxy refuses.
        (resp.bulk(b"mode"), resp.bulk(b"standalone")),
        (resp.bulk(b"role"), resp.bulk(b"master")),
        (resp.bulk(b"modules"), resp.EMPTY_ARRAY),
    ])


def _reset(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    s.worker.monitor.detach(s)
    s.name = b""
    s.reply_mode = None  # CLIENT REPLY ON
    if s.state is not None:
        s.state.reset()  # out of MULTI, no WATCH, no subscription
    s.set_protocol(2)
    s.logout()
    return resp.status("RESET")


def _select(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    try:
        db = int(args[1])
    except ValueError:
        return _NOT_INT
    if db == 0:
        return resp.OK
    return resp.error("ERR DB index is out of range (kvstore serves database 0 only)")


def _time(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    now = time.time_ns() // 1000
    return resp.array([resp.bulk(b"%d" % (now // 1_000_000)), resp.bulk(b"%d" % (now % 1_000_000))])


def _valid_name(name: bytes) -> bool:
    return all(33 <= c <= 126 for c in name)


def _client_setname(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    if not _valid_name(args[2]):
        return resp.error("ERR Client names cannot contain spaces, newlines or special characters.")
    s.name = args[2]
    return resp.OK


def _client_getname(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    return resp.bulk(s.name) if s.name else s.enc.null


def _client_id(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    return resp.integer(s.id)


def _client_list(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    sessions = list(s.worker.clients.values())
    if len(args) > 2:
        opt = args[2].lower()
        if opt == b"type" and len(args) == 4:
            kind = args[3].lower()
            if kind not in (b"normal", b"master", b"replica", b"pubsub"):
                return resp.error(f"ERR Unknown client type '{args[3].decode(errors='replace')}'")
            if kind in (b"normal", b"pubsub"):
                subscribed = {c for c in sessions if c.state is not None and c.state.subs is not None
                              and c.state.subs.count()}
                sessions = [c for c in sessions if (c in subscribed) == (kind == b"pubsub")]
            else:
                sessions = []
        elif opt == b"id" and len(args) > 3:
            try:
                ids = {int(a) for a in args[3:]}
            except ValueError:
                return resp.error("ERR Invalid client ID")
            sessions = [c for c in sessions if c.id in ids]
        else:
            return _SYNTAX
    return s.enc.verbatim(b"".join(c.describe() + b"\n" for c in sessions))


def _client_info(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    return s.enc.verbatim(s.describe() + b"\n")


def client_setinfo(s: Session, args: list[bytes]) -> bytes:
    """CLIENT SETINFO (Redis 7.2; redis-py sends it on connect). Not in 7.0's table, so called directly."""
    if len(args) != 4:
        return resp.error("ERR wrong number of arguments for 'client|setinfo' command")
    attr = args[2].lower()
    if not _valid_name(args[3]):
        return resp.error(f"ERR {attr.decode(errors='replace')} cannot contain spaces, newlines or special characters.")
    if attr == b"lib-name":
        s.lib_name = args[3]
    elif attr == b"lib-ver":
        s.lib_ver = args[3]
    else:
        return resp.error(f"ERR Unrecognized option '{args[2].decode(errors='replace')}'")
    return resp.OK


def _command_count(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    return resp.integer(sum(1 for spec in commands.all_specs() if b"|" not in spec.name))


def _acl_whoami(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    return resp.bulk(s.user.name.encode())


def _acl_cat(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    if len(args) > 3:
        return resp.error("ERR wrong number of arguments for 'acl|cat' command")
    out = acl.acl_cat(args)
    if out is None:
        return resp.error(f"ERR Unknown category '{args[2].decode(errors='replace')}'")
    return out


def _acl_list(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    return resp.array([resp.bulk(line) for line in s.worker.users.list_lines()])


def _acl_users(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    return resp.array([resp.bulk(name.encode()) for name in sorted(s.worker.users.by_name)])


def _slowlog_get(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    count = 10
    if len(args) > 2:
        try:
            count = int(args[2])
        except ValueError:
            return _NOT_INT
        if count < -1:
            return resp.error("ERR count should be greater than or equal to -1")
    entries = s.worker.slowlog.get(count)
    return resp.array([
        resp.array([resp.integer(i), resp.integer(ts), resp.integer(us),
                    resp.array([resp.bulk(a) for a in argv]), resp.bulk(addr), resp.bulk(name)])
        for i, ts, us, argv, addr, name in entries
    ])


def _slowlog_len(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    return resp.integer(len(s.worker.slowlog.entries))


def _slowlog_reset(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    s.worker.slowlog.reset()
    return resp.OK


HANDLERS: dict[bytes, Handler] = {
    b"ping": _ping, b"echo": _echo, b"quit": _quit, b"auth": _auth, b"hello": _hello,
    b"reset": _reset, b"select": _select, b"time": _time,
    b"client|setname": _client_setname, b"client|getname": _client_getname,
    b"client|id": _client_id, b"client|list": _client_list, b"client|info": _client_info,
    b"command|count": _command_count,
    b"acl|whoami": _acl_whoami, b"acl|cat": _acl_cat, b"acl|list": _acl_list, b"acl|users": _acl_users,
    b"slowlog|get": _slowlog_get, b"slowlog|len": _slowlog_len, b"slowlog|reset": _slowlog_reset,
    **fanout.HANDLERS,
    **inspection.HANDLERS,
    **scripting.HANDLERS,
    **configcmd.HANDLERS,
    **clientcmd.HANDLERS,
}


# --- refusals the command table leaves to run time (see commands.Kind) ---------------------------


def keyless(spec: CommandSpec, args: list[bytes]) -> bytes | None:
    """A SAME_SLOT command with no keys (EVAL ... 0): None to send it to any group."""
    return None


def keyed_option(spec: CommandSpec, args: list[bytes]) -> bytes | None:
    """Options the proxy cannot serve although the command itself is fine; None if all is well."""
    name = spec.name
    if name in (b"sort", b"sort_ro"):
        for i in range(2, len(args) - 1):
            low = args[i].lower()
            pattern = args[i + 1]
            if (low == b"by" and b"*" in pattern) or (low == b"get" and pattern != b"#"):
                return resp.error(
                    f"ERR {spec.display_name} with BY/GET patterns is not supported by kvstore-proxy: "
                    "the keys they name may live on other groups")
    elif name == b"copy":
        for a in args[3:]:
            if a.lower() == b"db":
                return resp.error("ERR COPY ... DB is not supported by kvstore-proxy: only database 0 exists")
    return None
