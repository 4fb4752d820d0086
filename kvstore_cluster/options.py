"""Cluster options: a typed record in ZooKeeper that kvstore-admin writes and every proxy applies live.

The znode (``paths.options``, read and written by ``ClusterStore.read_options``/``write_options``)
holds ``{"format": 1, "options": {NAME: VALUE, ...}}``. A name missing from it has its default, and
a cluster without the znode has every default, so clusters made before an option existed need no
migration. Decoding is strict: an unknown name or a value outside the option's choices is a
``ModelError``, and a proxy that reads one keeps the options it had (an older proxy never applies
half of a newer admin's record).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvstore_cluster import codec
from kvstore_cluster.codec import ModelError

# The keyless-tag option's default: the empty tag, whose slot is 0 (CRC16 of nothing).
KEYLESS_DEFAULT = ""
MAX_TAG = 1024


def _tag(value: str) -> str | None:
    """Why ``value`` is no good as a hash tag, or None."""
    if len(value.encode("utf-8", "surrogateescape")) > MAX_TAG:
        return f"a tag is at most {MAX_TAG} bytes"
    return None


@dataclass(frozen=True, slots=True)
class Option:
    """One option: its choices (the first is the default) or, for a free value, its default and
    checker; and what it does, for ``option list``."""

    name: str
    choices: tuple[str, ...]
    help: str
    free_default: str = ""
    problem: Callable[[str], str | None] | None = None  # a free value's check: why it is refused, or None

    @property
    def default(self) -> str:
        return self.choices[0] if self.choices else self.free_default


OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        Option(
            "transactions", ("single-slot", "per-group"),
            "single-slot: every key of a MULTI/EXEC (WATCHed keys too) must share one slot, else "
            "-CROSSSLOT. per-group: a transaction without WATCH may span groups; it runs as one "
            "MULTI/EXEC per group, each atomic on its own (not atomic across groups).",
        ),
        Option(
            "keyless-tag", (),
            "where EVAL/EVALSHA/FCALL (and _RO) with 0 keys run: on the group owning the slot of this "
            "hash tag (CRC16(tag) mod 16384, as a key {tag} or a key rule with this tag). Default: the "
            "empty tag, slot 0. Set it to the tag of the key rule whose keys such scripts touch.",
            free_default=KEYLESS_DEFAULT, problem=_tag,
        ),
    )
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """Every option's value; ``values`` holds only the ones set explicitly."""

    values: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.values.items():
            check(name, value)

    def get(self, name: str) -> str:
        return self.values.get(name, lookup(name).default)

    @property
    def transactions(self) -> str:
        return self.get("transactions")

    @property
    def keyless_tag(self) -> bytes:
        return self.get("keyless-tag").encode("utf-8", "surrogateescape")

    def with_value(self, name: str, value: str) -> ClusterOptions:
        check(name, value)
        return ClusterOptions({**self.values, name: value})

    def encode(self) -> bytes:
        return codec.dump_object({"options": dict(sorted(self.values.items()))})

    @classmethod
    def decode(cls, raw: bytes | str) -> ClusterOptions:
        obj = codec.load_object(raw, "options")
        values = codec.field(obj, "options", dict, "options")
        for name, value in values.items():
            if not isinstance(value, str):
                raise ModelError(f"options: the value of {name!r} must be a string, got {type(value).__name__}")
        return cls(dict(values))


def lookup(name: str) -> Option:
    option = OPTIONS.get(name)
    if option is None:
        raise ModelError(f"unknown option {name!r} (known: {', '.join(sorted(OPTIONS))})")
    return option


def check(name: str, value: Any) -> None:
    option = lookup(name)
    if option.choices:
        if value not in option.choices:
            raise ModelError(f"bad value {value!r} for option {name!r}: expected one of {', '.join(option.choices)}")
        return
    if not isinstance(value, str):
        raise ModelError(f"bad value {value!r} for option {name!r}: expected a string")
    why = option.problem(value) if option.problem is not None else None
    if why is not None:
        raise ModelError(f"bad value {value!r} for option {name!r}: {why}")
