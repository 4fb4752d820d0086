"""The script and function registry: every Lua script and function library the proxies have seen.

One znode per script under ``scripts/`` (named by its SHA1, holding its body) and one per
function library under ``functions/`` (named by the library, holding its code), so the size limit
of a znode (about 1 MB) applies to each one alone. Proxies register what clients load (SCRIPT
LOAD, EVAL, FUNCTION LOAD/RESTORE) and replay it where it is missing: a script before the first
EVALSHA of it on a connection, every library on each new connection to a master (a group added
later, a new master after a failover, a restarted node). docs/design.md, "Script and function
registry".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from kvstore_cluster import codec
from kvstore_cluster.codec import ModelError

MAX_BODY = 512 * 1024  # bytes of a script or library kept (base64 in JSON stays well under a znode's 1 MB)
MAX_SCRIPTS = 10_000  # scripts kept; past it, new ones run but are not replayed (logged)
_SHA = re.compile(r"^[0-9a-f]{40}$")
_LIBRARY = re.compile(r"^[A-Za-z0-9_]{1,64}$")  # Redis's rule for library names (and a safe znode name)
# FUNCTION LOAD's first line: "#!<engine> name=<library> [other args]"
_SHEBANG = re.compile(rb"^#!([A-Za-z0-9_]+)([^\n]*)")


def sha1(body: bytes) -> str:
    return hashlib.sha1(body).hexdigest()


def library_name(code: bytes) -> str | None:
    """The library a FUNCTION LOAD payload declares (``#!lua name=NAME``), None if it declares none."""
    m = _SHEBANG.match(code)
    if m is None:
        return None
    for arg in m.group(2).split():
        if arg.startswith(b"name="):
            name = arg[5:].decode(errors="replace")
            return name if _LIBRARY.match(name) else None
    return None


def check_sha(name: str) -> str:
    if not _SHA.match(name):
        raise ModelError(f"script {name!r}: a script's znode is named by its SHA1 (40 lowercase hex digits)")
    return name


def check_library(name: str) -> str:
    if not _LIBRARY.match(name):
        raise ModelError(f"function library {name!r}: names are 1-64 letters, digits and '_'")
    return name


def encode_body(body: bytes) -> bytes:
    return codec.dump_object({"body": base64.b64encode(body).decode()})


def decode_body(raw: bytes | str, what: str) -> bytes:
    """The body of a registry record: base64 in JSON, at most ``MAX_BODY`` bytes."""
    text = codec.field(codec.load_object(raw, what), "body", str, what)
    try:
        body = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ModelError(f"{what}: body is not base64 ({exc})") from None
    if len(body) > MAX_BODY:
        raise ModelError(f"{what}: body is larger than {MAX_BODY} bytes")
    return body


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script (EVAL's body); its znode's name is its SHA1, checked on decoding."""

    body: bytes

    @property
    def sha(self) -> str:
        return sha1(self.body)

    def encode(self) -> bytes:
        return encode_body(self.body)

    @classmethod
    def decode(cls, raw: bytes | str, name: str) -> Script:
        what = f"script {name}"
        body = decode_body(raw, what)
        if sha1(body) != check_sha(name):
            raise ModelError(f"{what}: the body's SHA1 is {sha1(body)}, not its name")
        return cls(body)


@dataclass(frozen=True, slots=True)
class Library:
    """A function library (FUNCTION LOAD's payload); its znode's name is the library's, checked on decoding."""

    code: bytes

    @property
    def name(self) -> str | None:
        return library_name(self.code)

    def encode(self) -> bytes:
        return encode_body(self.code)

    @classmethod
    def decode(cls, raw: bytes | str, name: str) -> Library:
        what = f"function library {name}"
        code = decode_body(raw, what)
        if library_name(code) != check_library(name):
            raise ModelError(f"{what}: its code declares library {library_name(code)!r}")
        return cls(code)
