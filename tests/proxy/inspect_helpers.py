"""Helpers of the INFO and MONITOR tests: a raw RESP connection, INFO text parsed with value kinds."""

from __future__ import annotations

import re
import socket
from typing import Any

import hiredis

_NOT_ENOUGH = object()


class Raw:
    """A plain socket speaking RESP: exact replies (redis-py would parse INFO into dicts)."""

    def __init__(self, port: int, timeout: float = 20.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH)

    def send(self, *args: Any) -> None:
        self.sock.sendall(hiredis.pack_command(tuple(a if isinstance(a, bytes) else str(a).encode() for a in args)))

    def read(self) -> Any:
        while True:
            value = self.reader.gets()
            if value is not _NOT_ENOUGH:
                return value
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("connection closed")
            self.reader.feed(chunk)

    def call(self, *args: Any) -> Any:
        self.send(*args)
        return self.read()

    def close(self) -> None:
        self.sock.close()


def info_text(port: int, *sections: str) -> str:
    raw = Raw(port)
    try:
        value = raw.call("INFO", *sections)
    finally:
        raw.close()
    assert isinstance(value, bytes), value
    return value.decode()


def headers(text: str) -> list[str]:
    return [ln for ln in text.split("\r\n") if ln.startswith("# ")]


def fields(text: str) -> dict[str, str]:
    out = {}
    for ln in text.split("\r\n"):
        if ln and not ln.startswith("#"):
            k, _, v = ln.partition(":")
            out[k] = v
    return out


def sections(text: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for ln in text.split("\r\n"):
        if ln.startswith("# "):
            current = out.setdefault(ln[2:].lower(), {})
        elif ln:
            k, _, v = ln.partition(":")
            current[k] = v
    return out


_PAIRS = re.compile(r"[\w.|-]+=[^,=]*(,[\w.|-]+=[^,=]*)+")


def kind(value: str) -> Any:
    """What a monitoring agent parses a value as: int, float, percent, key=value pairs, or text."""
    if re.fullmatch(r"-?\d+", value):
        return "int"
    if re.fullmatch(r"-?\d+\.\d+", value):
        return "float"
    if re.fullmatch(r"-?\d+\.\d+%", value):
        return "percent"
    if _PAIRS.fullmatch(value):
        return {k: kind(v) for k, _, v in (p.partition("=") for p in value.split(","))}
    return "text"
