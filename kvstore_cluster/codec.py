"""Strict JSON for every record kept in ZooKeeper: a format version, typed fields, ``ModelError`` otherwise."""

from __future__ import annotations

import json
from typing import Any

from kvstore_cluster.paths import check_name

FORMAT_VERSION = 1


class ModelError(ValueError):
    """Malformed cluster data (from ZooKeeper, a file or a user)."""


def load_object(raw: bytes | str, what: str) -> dict[str, Any]:
    """Decode ``raw`` as a JSON object of this format version; ``what`` names the record in errors."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ModelError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    fmt = obj.get("format", FORMAT_VERSION)
    if fmt != FORMAT_VERSION:
        raise ModelError(f"{what}: unsupported format version {fmt!r} (this kvstore reads {FORMAT_VERSION})")
    return obj


def dump_object(obj: dict[str, Any]) -> bytes:
    """Compact, key-sorted JSON carrying the format version."""
    return json.dumps({"format": FORMAT_VERSION, **obj}, separators=(",", ":"), sort_keys=True).encode()


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def check_type(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is a ``kind`` (a bool never passes for a number), else ``ModelError``."""
    # bool is an int subclass; never accept it where a number is meant.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise ModelError(f"{what} has the wrong type ({type(value).__name__})")
    return value


def field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    """The required field ``name`` of ``obj``, checked to be a ``kind``."""
    if name not in obj:
        raise ModelError(f"{what}: missing field {name!r}")
    return check_type(obj[name], kind, f"{what}: field {name!r}")


def optional(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    """The field ``name`` of ``obj`` if present and not null (checked to be a ``kind``), else ``None``."""
    if obj.get(name) is None:
        return None
    return check_type(obj[name], kind, f"{what}: field {name!r}")


def number(obj: dict[str, Any], name: str, what: str) -> float:
    return float(field(obj, name, (int, float), what))


def group_id(value: Any, what: str) -> str:
    try:
        return check_name("group", value)
    except ValueError as exc:
        raise ModelError(f"{what}: {exc}") from None


def parse_address(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` too) into ``(host, port)``; ``ValueError`` if bad."""
    if not isinstance(text, str):
        raise ValueError(f"bad address {text!r}: expected HOST:PORT")
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not (0 < int(port_text) < 65536):
        raise ValueError(f"bad address {text!r}: expected HOST:PORT with a port 1-65535")
    return host, int(port_text)


def address(value: Any, what: str) -> str:
    try:
        parse_address(value)
    except ValueError as exc:
        raise ModelError(f"{what}: {exc}") from None
    return value
