"""CLIENT KILL, REPLY, NO-EVICT, UNPAUSE for the proxy's own clients (the ones of this worker).

``CLIENT REPLY OFF|SKIP`` puts the session on the slow path (``routes`` empty) and runs each of its
requests with a throwaway reply queue: the command runs, its reply is dropped, the client's
earlier replies are still written in order. ``RESET`` and ``CLIENT REPLY`` themselves are never
silenced (Redis answers them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvstore_proxy import resp
from kvstore_proxy.datapath import CommandStat, Fifo

if TYPE_CHECKING:
    from kvstore_proxy.session import Session

OFF, SKIP = "off", "skip"  # Session.reply_mode (None: replies are sent)
_SYNTAX = resp.error("ERR syntax error")
_TYPES = (b"normal", b"master", b"replica", b"slave", b"pubsub")


def answered_anyway(args: list[bytes]) -> bool:
    """RESET and CLIENT REPLY reply whatever the reply mode."""
    name = args[0].lower()
    return name == b"reset" or (name == b"client" and len(args) > 1 and args[1].lower() == b"reply")


def silently(s: Session, args: list[bytes], raw: bytes, t0: float) -> None:
    """Serve a request of a session whose replies are off (or skipped once): its reply is dropped."""
    mode, s.reply_mode = s.reply_mode, None
    real, s.fifo = s.fifo, Fifo()
    try:
        s._slow(args, raw, t0)
    finally:
        s.fifo = real
        if mode == OFF and s.reply_mode is None:
            s.reply_mode = OFF
        s.refresh_routes()


def _client_reply(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    mode = args[2].lower()
    if mode == b"on":
        s.reply_mode = None
        s.refresh_routes()
        return resp.OK
    if mode in (b"off", b"skip"):
        s.reply_mode = OFF if mode == b"off" else SKIP
        s.refresh_routes()
        return None  # no reply to this one either
    return _SYNTAX


def _client_no_evict(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    # Accepted: the proxy evicts no client for memory; the groups' eviction is of keys.
    return resp.OK if args[2].lower() in (b"on", b"off") else _SYNTAX


def _client_unpause(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes:
    # CLIENT PAUSE is refused by the proxy, so nothing of its own is paused.
    return resp.OK


def _id(c: Any) -> int:
    return int(c.id)


def _addr(c: Any) -> str:
    return str(c.addr)


def _laddr(c: Any) -> str:
    return str(c.laddr)


def _user(c: Any) -> bytes:
    name = getattr(c.user, "name", None) or "default"  # acl.Permissions of the session's user
    return name.encode() if isinstance(name, str) else bytes(name)


def _kind(c: Any) -> bytes:
    st = c.state
    return b"pubsub" if st is not None and st.subs is not None and st.subs.count() else b"normal"


def _client_kill(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    """``CLIENT KILL addr:port`` (legacy: OK or an error) or ``CLIENT KILL <filter> <value> ...`` (a count)."""
    clients = list(s.worker.clients.values())
    if len(args) == 3:
        addr = args[2].decode(errors="replace")
        victims = [c for c in clients if c.addr == addr]
        if not victims:
            return resp.error("ERR No such client")
        return _kill(s, victims, stat, args, t0, resp.OK)
    if len(args) % 2:
        return _SYNTAX
    skipme = True
    tests: list[tuple[Any, Any]] = []  # (what of a client, the value it must have)
    for i in range(2, len(args), 2):
        opt, value = args[i].lower(), args[i + 1]
        if opt == b"id":
            wanted = int(value) if value.isdigit() else 0
            if wanted <= 0:
                return resp.error("ERR client-id should be greater than 0")
            tests.append((_id, wanted))
        elif opt == b"addr":
            tests.append((_addr, value.decode(errors="replace")))
        elif opt == b"laddr":
            tests.append((_laddr, value.decode(errors="replace")))
        elif opt == b"user":
            tests.append((_user, value))
        elif opt == b"type":
            kind = value.lower()
            if kind not in _TYPES:
                return resp.error(f"ERR Unknown client type '{value.decode(errors='replace')}'")
            tests.append((_kind, kind))  # the proxy's clients are normal or pubsub, never masters or replicas
        elif opt == b"skipme":
            low = value.lower()
            if low not in (b"yes", b"no"):
                return _SYNTAX
            skipme = low == b"yes"
        else:
            return _SYNTAX
    victims = [c for c in clients if all(get(c) == v for get, v in tests) and not (skipme and c is s)]
    return _kill(s, victims, stat, args, t0, resp.integer(len(victims)))


def _kill(s: Session, victims: list[Any], stat: CommandStat, args: list[bytes], t0: float,
          reply: bytes) -> bytes | None:
    """Close the victims; the caller itself, if among them, once this reply is written (as Redis does)."""
    for c in victims:
        if c is not s:
            c.close()
    if s in victims:
        s.quit_after(s.answer(stat, args, t0, reply))
        return None
    return reply


HANDLERS: dict[bytes, Any] = {
    b"client|kill": _client_kill, b"client|reply": _client_reply, b"client|no-evict": _client_no_evict,
    b"client|unpause": _client_unpause,
}
