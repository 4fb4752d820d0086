"""The import's connections to the groups' masters: pipelined writes whose replies are checked as they come back,
and each group's marker (the stream offset it has applied, written in the same MULTI/EXEC as the commands).

The marker lives in a database the proxy never serves (``MARKER_DB``), so clients do not see it; a
replica gets it with the data it covers, so a group whose master fails over keeps a marker that
matches its data.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvstore_admin.errors import NODE_FAILED, AdminError
from kvstore_admin.importing.resp import Conn, LinkError, ProtocolError, ReplyError, pack

MARKER_DB = 15  # the last of Redis's default 16 databases; kvstore serves only database 0
MARKER_KEY = b"kvstore-import"
MULTI = pack("MULTI")
EXEC = pack("EXEC")
SELECT_MARKER = pack("SELECT", MARKER_DB)
SELECT_DATA = pack("SELECT", 0)


class GroupError(AdminError):
    """A group's master failed or refused a write the import needs: the import stops (resumable)."""

    code = NODE_FAILED


@dataclass(frozen=True, slots=True)
class Marker:
    replid: str
    offset: int  # every command of the stream up to this offset that belongs to the group is applied
    db: int  # the source database selected at that offset (-1: none yet)

    def encode(self) -> bytes:
        return b"%s %d %d" % (self.replid.encode(), self.offset, self.db)

    @classmethod
    def decode(cls, raw: bytes) -> Marker | None:
        parts = raw.split()
        if len(parts) != 3 or len(parts[0]) != 40:
            return None
        try:
            return cls(parts[0].decode(), int(parts[1]), int(parts[2]))
        except (ValueError, UnicodeDecodeError):
            return None


def marker_commands(marker: Marker) -> bytes:
    return SELECT_MARKER + pack("SET", MARKER_KEY, marker.encode()) + SELECT_DATA


# A check runs on the replies of one pipelined request, and raises or records what is wrong.
Check = Callable[[list[Any]], None]


class GroupLink:
    """One group's master: ``send`` a request with how many replies it gets and how to check them."""

    def __init__(self, gid: str, address: str, password: str | None, timeout: float = 60.0):
        self.gid = gid
        self.address = address
        self.name = f"group {gid}'s master"
        try:
            self.conn = Conn(address, timeout, self.name)
            if password:
                self.conn.call("AUTH", password)
            self.conn.call("PING")
        except (LinkError, ProtocolError, ReplyError) as exc:
            raise GroupError(f"{self.name} {address}: {exc}") from None
        self.expected: deque[tuple[int, Check | None]] = deque()
        self.partial: list[Any] = []  # replies read so far of the oldest request
        self.pending = 0  # replies not read yet

    def send(self, data: bytes | bytearray, replies: int, check: Check | None = None) -> None:
        try:
            self.conn.send(data)
        except LinkError as exc:
            raise GroupError(str(exc)) from None
        self.expected.append((replies, check))
        self.pending += replies

    def drain(self, keep: int = 0) -> None:
        """Read replies until at most ``keep`` are outstanding, running each request's check."""
        self._advance(True, keep)

    def poll(self) -> None:
        """Read the replies that have arrived, never waiting for more."""
        self._advance(False, 0)

    def _advance(self, block: bool, keep: int) -> None:
        reader = self.conn.reader
        try:
            while self.expected and self.pending > keep:
                count, check = self.expected[0]
                partial = self.partial
                while len(partial) < count:
                    reply = reader.gets()
                    if reply is not False:
                        partial.append(reply)
                    elif block:
                        self.conn.recv_into_reader()
                    elif not self._recv_now():
                        return
                self.expected.popleft()
                self.partial = []
                self.pending -= count
                if check is not None:
                    check(partial)
        except (LinkError, ProtocolError) as exc:
            raise GroupError(str(exc)) from None

    def _recv_now(self) -> bool:
        sock = self.conn.sock
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise LinkError(f"lost the connection to {self.name} {self.address} ({exc})") from None
        finally:
            sock.settimeout(timeout)
        if not data:
            raise LinkError(f"{self.name} {self.address} closed the connection")
        self.conn.reader.feed(data)
        return True

    def call(self, *args: Any) -> Any:
        """One command, after every outstanding reply; an error reply raises ``GroupError``."""
        self.drain()
        try:
            return self.conn.call(*args)
        except ReplyError as exc:
            raise GroupError(f"{self.name} {self.address} refused {args[0]!s}: {exc}") from None
        except (LinkError, ProtocolError) as exc:
            raise GroupError(str(exc)) from None

    def read_marker(self) -> Marker | None:
        self.drain()
        try:
            replies = self.conn.call_many([("SELECT", MARKER_DB), ("GET", MARKER_KEY), ("SELECT", 0)])
        except (LinkError, ProtocolError) as exc:
            raise GroupError(str(exc)) from None
        if isinstance(replies[0], ReplyError):
            raise GroupError(f"{self.name} {self.address} has no database {MARKER_DB} for the import's marker "
                             f"({replies[0]}); kvstore's nodes need the default 'databases 16'")
        return Marker.decode(replies[1]) if isinstance(replies[1], bytes) else None

    def write_marker(self, marker: Marker) -> None:
        self.drain()
        self.send(MULTI + marker_commands(marker) + EXEC, 5, expect_exec(self))
        self.drain()

    def delete_marker(self) -> None:
        self.drain()
        try:
            self.conn.call_many([("SELECT", MARKER_DB), ("DEL", MARKER_KEY), ("SELECT", 0)])
        except (LinkError, ProtocolError) as exc:
            raise GroupError(str(exc)) from None

    def close(self) -> None:
        self.conn.close()


def expect_exec(link: GroupLink, on_error: Callable[[ReplyError], None] | None = None) -> Check:
    """Check of ``MULTI ... EXEC``: an aborted transaction stops the import; a failed command inside is passed
    to ``on_error`` (or stops it too)."""

    def check(replies: list[Any]) -> None:
        result = replies[-1]
        if isinstance(result, ReplyError):
            cause = next((r for r in replies[1:-1] if isinstance(r, ReplyError)), result)
            raise GroupError(f"{link.name} {link.address} refused the import's transaction ({cause})")
        if not isinstance(result, list):
            raise GroupError(f"{link.name} {link.address} answered EXEC with {result!r}")
        for r in result:
            if isinstance(r, ReplyError):
                if on_error is None:
                    raise GroupError(f"{link.name} {link.address} failed a command of the import ({r})")
                on_error(r)

    return check


def expect_ok(link: GroupLink, what: str) -> Check:
    def check(replies: list[Any]) -> None:
        if replies.count(b"OK") == len(replies):  # the common case, at C speed
            return
        for r in replies:
            if isinstance(r, ReplyError):
                raise GroupError(f"{link.name} {link.address} refused {what} ({r})")

    return check
