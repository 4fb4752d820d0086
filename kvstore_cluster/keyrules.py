"""The ``keyrules`` znode: the cluster's key rules (prefix -> tag) and the rule change in progress.

A key that starts with a rule's prefix hashes as if its hash tag were the rule's tag (slot =
CRC16(tag) mod 16384); the longest matching prefix wins; a key matching no rule hashes as Redis
Cluster does. :meth:`KeyRules.slotter` is the slot function every process uses (the compiled
``Slotter``, built once per version of this record).

A change of the rules moves the keys whose slot changes (docs/design.md, "Key rules"): while
``change`` is set, proxies hold requests on the keys that move (:meth:`KeyRules.routing`) and the
executor (``ops/rule_change.py``) moves them; the commit makes ``change.rules`` the rules.

Prefixes and tags are bytes; in JSON they are strings, bytes that are not UTF-8 kept as
``surrogateescape`` code points (``\\udcXX``), so any key prefix round-trips.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kvstore_cluster import codec
from kvstore_cluster.codec import ModelError
from kvstore_cluster.slots import Slotter

_WHAT = "keyrules"
MAX_PREFIX = 1024  # bytes; a prefix is matched byte by byte on every request of a matching key
MAX_TAG = 1024
MAX_RULES = 10_000


def to_text(value: bytes) -> str:
    """Bytes as they are kept in JSON (UTF-8; other bytes as surrogate escapes)."""
    return value.decode("utf-8", "surrogateescape")


def from_text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def show(value: bytes) -> str:
    """Bytes for a human: printable ASCII as it is, anything else as ``\\xNN``."""
    return repr(value)[2:-1] if not (value.isascii() and value.decode().isprintable()) else value.decode()


@dataclass(frozen=True, slots=True)
class KeyRule:
    prefix: bytes
    tag: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, bytes) or not isinstance(self.tag, bytes):
            raise ModelError(f"{_WHAT}: a rule's prefix and tag are bytes")
        if not self.prefix:
            raise ModelError(f"{_WHAT}: a rule's prefix must not be empty (it would match every key)")
        if len(self.prefix) > MAX_PREFIX or len(self.tag) > MAX_TAG:
            raise ModelError(f"{_WHAT}: prefixes and tags are at most {MAX_PREFIX} bytes")

    @property
    def slot(self) -> int:
        """CRC16(tag) mod 16384: the slot of every key this rule matches."""
        return tag_slot(self.tag)

    def to_json(self) -> dict[str, str]:
        return {"prefix": to_text(self.prefix), "tag": to_text(self.tag)}


def tag_slot(tag: bytes) -> int:
    # The slot function itself: a one-rule Slotter (braces in a tag are hashed as they are).
    return Slotter([(b"\0", tag)]).key_slot(b"\0")


def _rules(value: Any, what: str) -> tuple[KeyRule, ...]:
    if not isinstance(value, list):
        raise ModelError(f"{what} must be a JSON list")
    if len(value) > MAX_RULES:
        raise ModelError(f"{what}: at most {MAX_RULES} rules")
    out: list[KeyRule] = []
    seen: set[bytes] = set()
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ModelError(f"{what}[{i}] must be a JSON object with prefix and tag")
        prefix = codec.field(item, "prefix", str, f"{what}[{i}]")
        tag = codec.field(item, "tag", str, f"{what}[{i}]")
        rule = KeyRule(from_text(prefix), from_text(tag))
        if rule.prefix in seen:
            raise ModelError(f"{what}: prefix {show(rule.prefix)!r} appears twice")
        seen.add(rule.prefix)
        out.append(rule)
    return tuple(sorted(out, key=lambda r: r.prefix))


def normalized(rules: Iterable[KeyRule]) -> tuple[KeyRule, ...]:
    """Sorted by prefix, each prefix once (checked)."""
    out = tuple(sorted(rules, key=lambda r: r.prefix))
    for a, b in zip(out, out[1:], strict=False):
        if a.prefix == b.prefix:
            raise ModelError(f"{_WHAT}: prefix {show(a.prefix)!r} appears twice")
    if len(out) > MAX_RULES:
        raise ModelError(f"{_WHAT}: at most {MAX_RULES} rules")
    return out


@dataclass(frozen=True, slots=True)
class RuleChange:
    """A change of the rules in progress: the rules it leads to, and what the user asked."""

    rules: tuple[KeyRule, ...]
    request: str
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", normalized(self.rules))

    def to_json(self) -> dict[str, Any]:
        return {"rules": [r.to_json() for r in self.rules], "request": self.request, "started_at": self.started_at}


@dataclass(frozen=True, slots=True)
class KeyRules:
    """The rules in force and, while one runs, the change to other rules."""

    rules: tuple[KeyRule, ...] = ()
    change: RuleChange | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", normalized(self.rules))

    # --- the slot functions ------------------------------------------------------------------------

    def slotter(self) -> Slotter:
        """The slot function of the rules in force."""
        return _slotter(self.rules)

    def target_slotter(self) -> Slotter:
        """The slot function once the change in progress (if any) is done."""
        return _slotter(self.change.rules) if self.change is not None else self.slotter()

    def routing(self) -> tuple[Slotter, frozenset[int]]:
        """What a proxy routes with: a slot function and the *hub* slots whose keys may be moving.

        Without a change: the rules' slotter, no hub. During a change: the new rules plus every
        removed prefix with its old tag. Then every key whose slot changes lands in the slot of
        the tag of the rule that changed for it (its hub): an added or re-tagged prefix's new tag,
        a removed prefix's old tag. A key whose longest match is a rule neither added, removed nor
        re-tagged keeps its slot (no longer prefix that changed can match it), and a key matching
        none of these rules matched none before either. So only requests landing in a hub slot
        need a look at their keys.
        """
        if self.change is None:
            return self.slotter(), frozenset()
        old = {r.prefix: r.tag for r in self.rules}
        new = {r.prefix: r.tag for r in self.change.rules}
        hubs = {KeyRule(p, t).slot for p, t in new.items() if old.get(p) != t}
        removed = {p: t for p, t in old.items() if p not in new}
        hubs.update(KeyRule(p, t).slot for p, t in removed.items())
        routing = [KeyRule(p, t) for p, t in new.items()] + [KeyRule(p, t) for p, t in removed.items()]
        return _slotter(routing), frozenset(hubs)

    def changed_prefixes(self) -> tuple[bytes, ...]:
        """Prefixes whose keys may change slot in the change in progress (added, removed, re-tagged)."""
        if self.change is None:
            return ()
        old = {r.prefix: r.tag for r in self.rules}
        new = {r.prefix: r.tag for r in self.change.rules}
        return tuple(sorted(p for p in old.keys() | new.keys() if old.get(p) != new.get(p)))

    # --- JSON -------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"rules": [r.to_json() for r in self.rules],
                "change": self.change.to_json() if self.change is not None else None}

    def encode(self) -> bytes:
        return codec.dump_object(self.to_json())

    @classmethod
    def decode(cls, raw: bytes | str) -> KeyRules:
        obj = codec.load_object(raw, _WHAT)
        if "rules" not in obj:
            raise ModelError(f"{_WHAT}: missing field 'rules'")
        rules = _rules(obj["rules"], f"{_WHAT}: rules")
        change = None
        c = codec.optional(obj, "change", dict, _WHAT)
        if c is not None:
            what = f"{_WHAT}: change"
            if "rules" not in c:
                raise ModelError(f"{what}: missing field 'rules'")
            change = RuleChange(
                rules=_rules(c["rules"], f"{what}: rules"),
                request=codec.field(c, "request", str, what),
                started_at=codec.number(c, "started_at", what),
            )
        return cls(rules, change)


_CACHE: dict[tuple[KeyRule, ...], Slotter] = {}


def _slotter(rules: Iterable[KeyRule]) -> Slotter:
    """Slotters are built once per set of rules (a process keeps the last few)."""
    key = tuple(sorted(rules, key=lambda r: r.prefix))
    found = _CACHE.get(key)
    if found is None:
        if len(_CACHE) > 8:
            _CACHE.clear()
        found = _CACHE[key] = Slotter([(r.prefix, r.tag) for r in key])
    return found


def parse_prefixes(values: Iterable[str]) -> list[bytes]:
    """Command-line prefixes (as the shell gave them) to bytes; refuses empty ones."""
    out = []
    for v in values:
        b = from_text(v)
        if not b:
            raise ModelError("a key rule's prefix must not be empty (it would match every key)")
        out.append(b)
    return out

