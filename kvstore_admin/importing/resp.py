"""A small blocking RESP connection (hiredis parser) for pipelines of many thousand commands per round trip.

redis-py spends microseconds per command in its layers; the import moves millions of keys, so it
builds requests as bytes and parses replies straight from hiredis.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

import hiredis

from kvstore_cluster import tls
from kvstore_cluster.model import parse_address

RECV_SIZE = 1 << 20


class ReplyError(Exception):
    """An error reply (``-ERR ...``); returned inside reply lists, raised by ``call``."""


class ProtocolError(Exception):
    """The peer sent something that is not RESP."""


class LinkError(Exception):
    """The connection failed, timed out or was closed by the peer."""


def arg(value: bytes | str | int | float) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return str(value).encode()


def pack(*args: bytes | str | int | float) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = arg(a)
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


def new_reader() -> Any:
    return hiredis.Reader(protocolError=ProtocolError, replyError=ReplyError)


class Conn:
    """One TCP connection to a Redis server: ``send`` bytes, ``read`` replies in order."""

    def __init__(self, address: str, timeout: float = 10.0, name: str = "node"):
        self.address = address
        self.name = name  # what the address is, for messages ("the source", "group g1's master")
        host, port = parse_address(address)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            context = tls.for_address(address)  # a group's node that speaks TLS (kvstore_cluster/tls.py)
            self.sock = context.wrap_socket(sock, server_hostname=host) if context is not None else sock
        except OSError as exc:
            raise LinkError(f"cannot connect to {name} {address} ({exc.strerror or exc})") from None
        self.reader = new_reader()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def send(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise LinkError(f"lost the connection to {self.name} {self.address} ({_reason(exc)})") from None

    def recv_into_reader(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except OSError as exc:
            raise LinkError(f"lost the connection to {self.name} {self.address} ({_reason(exc)})") from None
        if not data:
            raise LinkError(f"{self.name} {self.address} closed the connection")
        self.reader.feed(data)

    def read(self) -> Any:
        """The next reply (an error reply is returned as a ``ReplyError``, not raised)."""
        reader = self.reader
        while True:
            try:
                reply = reader.gets()
            except ProtocolError as exc:
                raise ProtocolError(f"{self.name} {self.address} does not speak the Redis protocol ({exc})") from None
            if reply is not False:
                return reply
            self.recv_into_reader()

    def read_many(self, n: int) -> list[Any]:
        reader = self.reader
        out: list[Any] = []
        append = out.append
        while len(out) < n:
            try:
                reply = reader.gets()
            except ProtocolError as exc:
                raise ProtocolError(f"{self.name} {self.address} does not speak the Redis protocol ({exc})") from None
            if reply is False:
                self.recv_into_reader()
            else:
                append(reply)
        return out

    def call(self, *args: bytes | str | int | float) -> Any:
        """Send one command and return its reply; an error reply raises ``ReplyError``."""
        self.send(pack(*args))
        reply = self.read()
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def call_many(self, commands: Iterable[tuple[bytes | str | int | float, ...]]) -> list[Any]:
        """Pipeline ``commands``; replies in order (errors returned, not raised)."""
        cmds = list(commands)
        self.send(b"".join(pack(*c) for c in cmds))
        return self.read_many(len(cmds))


def first_error(replies: Iterable[Any]) -> ReplyError | None:
    for r in replies:
        if isinstance(r, ReplyError):
            return r
    return None


def _reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc) or type(exc).__name__
