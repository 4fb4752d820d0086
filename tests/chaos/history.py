"""The recorded history: one ``Op`` per request a workload client made, with its outcome ok / failed / unknown.

An outcome is **failed** only when the request certainly did not change anything: the connection
was refused before a byte was sent, or the reply is an error that the proxy (or Redis) sends
*instead of* running the command. Anything else that is not a normal reply is **unknown**: the
request may have been applied, now or later (a proxy that times out a backend still has the
request in that backend's socket; a paused Redis runs it when it wakes up).

Which proxy errors are definite, from ``kvstore_proxy``:

- ``Refuser`` answers without forwarding: ``-TRYAGAIN`` (fenced / no tables yet) and
  ``-CLUSTERDOWN`` (slot not served, group down).
- ``Backend.refuse`` answers without forwarding while the backend is not up:
  ``-ERR backend G ADDR is down (...)`` and ``-ERR backend G ADDR is not connected``.
- ``Backend._went_down`` after a failed *connect* fails the requests that were queued while
  connecting and never written: ``-ERR backend G ADDR connect failed: ...``. ``close()`` without a
  transport fails never-written requests: ``-ERR backend G ADDR closed``.
- The session answers ``-CROSSSLOT``, ``-NOAUTH``, arity/unknown-command errors itself, and
  ``-ERR max number of leased backend connections ...`` before it sends anything.
- ``-EXECABORT``: a command was refused when queued, so EXEC ran nothing.
- Redis refuses before executing: ``-READONLY`` (a demoted master, e.g. writes paused by a
  switchover), ``-NOREPLICAS`` (min-replicas-to-write), ``-LOADING``, ``-MASTERDOWN``.

Every other ``-ERR backend ...`` (``connection lost``, ``connection closed by the server``,
``timeout: no reply within``, ``protocol error``) fails requests that *were* written: unknown.
So is any error this module does not know: the safe default.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OK, FAILED, UNKNOWN = "ok", "failed", "unknown"

# Write kinds and what they do to the model (see workload.py for the key scheme).
SET = "set"  # SET S:<client>:<seq> <value>: a key written exactly once
RPUSH = "rpush"  # RPUSH L:<n> <value>: a value appended exactly once
INCR = "incr"  # INCR C:<n>
REG = "reg"  # SET R:<n> <value>: a register overwritten by everyone
MINCR = "mincr"  # MULTI, INCR {T:<n>}a, INCR {T:<n>}b, EXEC: a tag's two counters, together (key T:<n>)
QPUSH = "qpush"  # LPUSH Q:<n> <value>: an element queued exactly once
QPOP = "qpop"  # BRPOP Q:<n> 1: an element taken (result: its value, None when the wait timed out)
WRITES = frozenset({SET, RPUSH, INCR, REG, MINCR, QPUSH, QPOP})
# Read kinds.
GET = "get"  # GET of a SET key
LRANGE = "lrange"  # LRANGE L:<n> 0 -1
GETC = "getc"  # GET C:<n>
GETR = "getr"  # GET R:<n>

_DEFINITE_PREFIXES = (
    "TRYAGAIN", "CLUSTERDOWN", "CROSSSLOT", "NOAUTH", "WRONGPASS", "READONLY", "NOREPLICAS",
    "LOADING", "MASTERDOWN", "ERR max number of clients reached", "ERR unknown command",
    "ERR wrong number of arguments", "EXECABORT", "ERR max number of leased backend connections",
)
_DEFINITE_BACKEND = re.compile(r"^ERR backend \S+ \S+ (is down \(|is not connected|\(RESP3\) is not connected"
                               r"|connect failed|closed$)")


def classify_error(text: str) -> str:
    """FAILED if an error reply proves the request was not applied, else UNKNOWN (module docstring)."""
    if text.startswith(_DEFINITE_PREFIXES):
        return FAILED
    if _DEFINITE_BACKEND.match(text):
        return FAILED
    return UNKNOWN


@dataclass(slots=True)
class Op:
    """One request: what was asked, when (``time.monotonic``), and what came of it."""

    id: int
    client: int
    kind: str
    key: str
    value: str | None = None  # the value written (SET/RPUSH/REG)
    start: float = 0.0
    end: float = 0.0  # when the outcome was known (the reply, or the error)
    outcome: str = UNKNOWN
    result: Any = None  # a read's reply (str / list[str] / None), INCR's new value
    error: str | None = None
    proxy: int | None = None

    @property
    def is_write(self) -> bool:
        return self.kind in WRITES

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class History:
    """All ops of a run, in no particular order (each client's own ops are in its order)."""

    ops: list[Op] = field(default_factory=list)

    def extend(self, ops: Iterable[Op]) -> None:
        self.ops.extend(ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def counts(self) -> dict[str, int]:
        out = {OK: 0, FAILED: 0, UNKNOWN: 0}
        for op in self.ops:
            out[op.outcome] += 1
        return out

    def errors(self, limit: int = 8) -> dict[str, int]:
        """The most frequent error texts (digits blanked so that one kind counts once)."""
        seen: dict[str, int] = {}
        for op in self.ops:
            if op.error:
                text = re.sub(r"\d+", "N", op.error)[:90]
                seen[text] = seen.get(text, 0) + 1
        return dict(sorted(seen.items(), key=lambda kv: -kv[1])[:limit])

    def dump(self, path: Path) -> None:
        """One JSON object per line, for reading a failed run afterwards."""
        with open(path, "w") as f:
            for op in self.ops:
                f.write(json.dumps(op.to_json()) + "\n")

    @classmethod
    def load(cls, path: Path) -> History:
        with open(path) as f:
            return cls([Op(**json.loads(line)) for line in f if line.strip()])
