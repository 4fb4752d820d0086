"""The ``reshard`` znode: the reshard in progress, its steps and phase (the executor writes it, proxies read it);
and ``reshard-progress``, the running executor's live figures (it writes them, ``status`` reads them).

The protocol it drives is in docs/design.md ("Resharding"): per step ``pending -> marked ->
moving -> committed``; proxies hold newly marked slots until the phase says every proxy has
the mark (:meth:`ReshardState.keys_may_move`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kvstore_cluster import codec
from kvstore_cluster.codec import ModelError
from kvstore_cluster.model import Migration
from kvstore_cluster.slots import format_slot_ranges

PHASES = ("pending", "marked", "moving", "committed")
# Phases in which every registered proxy has applied the current step's marks.
RELEASED_PHASES = ("moving", "committed")
_WHAT = "reshard"


def _request(value: Any) -> dict[str, str | int | bool | None]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ModelError(f"{_WHAT}: request must be a JSON object")
    for k, v in value.items():
        if not (v is None or isinstance(v, str | int | bool)):
            raise ModelError(f"{_WHAT}: request field {k!r} must be a string, number, boolean or null")
    if not isinstance(value.get("command"), str):
        raise ModelError(f"{_WHAT}: request has no command")
    return dict(value)


@dataclass(frozen=True, slots=True)
class ReshardState:
    """One reshard: the request it came from, its steps (each a few migrations) and where it is."""

    request: Mapping[str, str | int | bool | None]  # what the user asked for: "the same command again" resumes
    steps: tuple[tuple[Migration, ...], ...]
    step: int = 0
    phase: str = "pending"
    version: int = -1  # the slots version the barrier of this phase waits for
    no_data: bool = False
    aborting: bool = False
    keys_moved: int = 0
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        _request(self.request)
        if not self.steps or not all(self.steps):
            raise ModelError(f"{_WHAT}: every reshard has at least one step, and every step a migration")
        if self.phase not in PHASES:
            raise ModelError(f"{_WHAT}: phase must be one of {', '.join(PHASES)}, got {self.phase!r}")
        if not (0 <= self.step < len(self.steps)):
            raise ModelError(f"{_WHAT}: step {self.step} is not one of its {len(self.steps)} steps")
        if self.version < -1 or self.keys_moved < 0:
            raise ModelError(f"{_WHAT}: version and keys_moved cannot be negative")

    @property
    def current(self) -> tuple[Migration, ...]:
        return self.steps[self.step]

    @property
    def total_slots(self) -> int:
        return sum(m.size for s in self.steps for m in s)

    @property
    def slots_done(self) -> int:
        done = sum(m.size for s in self.steps[: self.step] for m in s)
        if self.phase == "committed":
            done += sum(m.size for m in self.current)
        return done

    @property
    def request_text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in sorted(self.request.items()) if v not in (None, False))

    def at(self, **changes: Any) -> ReshardState:
        """A copy with ``changes`` (validated like any other)."""
        return replace(self, **changes)

    def keys_may_move(self, migrating: Iterable[Migration]) -> bool:
        """May a proxy that applied a table marking ``migrating`` move keys of those slots now?

        Only if every proxy has the marks (phase ``moving`` or ``committed``) *of exactly these
        migrations*: this znode and the slot table change in one transaction but reach a proxy as
        two watch events, so a table with the next step's marks may come before this record.
        """
        if self.phase not in RELEASED_PHASES:
            return False
        current = set(self.current)
        return all(m in current for m in migrating)

    def describe(self) -> str:
        what = ", ".join(f"{format_slot_ranges([(m.lo, m.hi)])} {m.source}->{m.target}" for m in self.current)
        return f"step {self.step + 1}/{len(self.steps)} ({what}), phase {self.phase}"

    def summary(self) -> dict[str, Any]:
        """JSON-ready: what ``kvstore-admin status`` shows of it."""
        return {
            "request": dict(self.request), "request_text": self.request_text,
            "phase": self.phase, "step": self.step + 1, "steps": len(self.steps),
            "moving": [{"lo": m.lo, "hi": m.hi, "from": m.source, "to": m.target} for m in self.current],
            "slots_done": self.slots_done, "slots_total": self.total_slots, "keys_moved": self.keys_moved,
            "aborting": self.aborting, "no_data": self.no_data, "started_at": self.started_at,
        }

    def encode(self) -> bytes:
        return codec.dump_object({
            "request": dict(self.request), "steps": [[m.to_json() for m in s] for s in self.steps],
            "step": self.step, "phase": self.phase, "version": self.version, "no_data": self.no_data,
            "aborting": self.aborting, "keys_moved": self.keys_moved, "started_at": self.started_at,
        })

    @classmethod
    def decode(cls, raw: bytes | str) -> ReshardState:
        obj = codec.load_object(raw, _WHAT)
        steps = codec.field(obj, "steps", list, _WHAT)
        if not all(isinstance(s, list) for s in steps):
            raise ModelError(f"{_WHAT}: each step must be a list of migrations")
        return cls(
            request=_request(codec.field(obj, "request", dict, _WHAT)),
            steps=tuple(tuple(Migration.from_json(m, _WHAT) for m in s) for s in steps),
            step=codec.field(obj, "step", int, _WHAT),
            phase=codec.field(obj, "phase", str, _WHAT),
            version=codec.field(obj, "version", int, _WHAT),
            no_data=codec.field(obj, "no_data", bool, _WHAT),
            aborting=codec.field(obj, "aborting", bool, _WHAT),
            keys_moved=codec.field(obj, "keys_moved", int, _WHAT),
            started_at=codec.number(obj, "started_at", _WHAT),
        )


_PROGRESS = "reshard-progress"


@dataclass(frozen=True, slots=True)
class ReshardProgress:
    """What a running executor has done so far (rewritten about once a second, ephemeral)."""

    keys_moved: int  # by this run
    keys_total: int  # by this run when it is done: an estimate until each source has been read once
    bytes_moved: int
    seconds: float  # since this run started
    keys_per_second: float
    eta_seconds: float | None  # None while there is no rate to go by
    longest_stall_ms: float  # the longest single command the mover ran on a server
    updated_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if min(self.keys_moved, self.keys_total, self.bytes_moved) < 0 or self.seconds < 0:
            raise ModelError(f"{_PROGRESS}: counts and seconds cannot be negative")

    def to_json(self) -> dict[str, Any]:
        return {"keys_moved": self.keys_moved, "keys_total": self.keys_total, "bytes_moved": self.bytes_moved,
                "seconds": round(self.seconds, 3), "keys_per_second": round(self.keys_per_second),
                "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
                "longest_stall_ms": round(self.longest_stall_ms, 1), "updated_at": self.updated_at}

    def encode(self) -> bytes:
        return codec.dump_object(self.to_json())

    @classmethod
    def decode(cls, raw: bytes | str) -> ReshardProgress:
        obj = codec.load_object(raw, _PROGRESS)
        eta = codec.optional(obj, "eta_seconds", (int, float), _PROGRESS)
        return cls(
            keys_moved=codec.field(obj, "keys_moved", int, _PROGRESS),
            keys_total=codec.field(obj, "keys_total", int, _PROGRESS),
            bytes_moved=codec.field(obj, "bytes_moved", int, _PROGRESS),
            seconds=codec.number(obj, "seconds", _PROGRESS),
            keys_per_second=codec.number(obj, "keys_per_second", _PROGRESS),
            eta_seconds=None if eta is None else float(eta),
            longest_stall_ms=codec.number(obj, "longest_stall_ms", _PROGRESS),
            updated_at=codec.number(obj, "updated_at", _PROGRESS),
        )
