"""The ``import`` znode: an import from a standalone Redis, and where it is.

Written by ``kvstore-admin import`` (kvstore_admin/importing/run.py), read through
``ClusterStore.read_import``; docs/design.md ("Import") has the protocol.

The exact position of each group is not here but in the group itself (a marker written in the
same MULTI/EXEC as the commands it covers); this record names the source, the replication
history (``replid``) the markers belong to, the slot layout the keys were routed with, and a
recent lower bound of the offset applied, for ``status`` and for humans.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field

from kvstore_cluster import codec
from kvstore_cluster.codec import ModelError
from kvstore_cluster.model import SlotTable

PHASES = ("snapshot", "streaming", "done")
_REPLID = re.compile(r"^[0-9a-f]{40}$")
_WHAT = "import"


def slots_digest(table: SlotTable) -> str:
    """A short fingerprint of slot ownership: a resumed import needs the owners its keys were routed with."""
    return hashlib.sha1(repr(table.ranges).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ImportState:
    """One import: its source, its phase and how far it got."""

    source: str  # HOST:PORT of the standalone Redis
    db: int  # the source's database copied into the cluster
    phase: str
    replid: str  # the source's replication id the snapshot and the markers belong to
    snapshot_offset: int  # the source's replication offset of the snapshot
    offset: int  # a lower bound of the offset every group has applied (the groups' markers are exact)
    slots_digest: str
    snapshot_keys: int = 0
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    finished_at: float | None = None  # when the cutover found the cluster in sync

    def __post_init__(self) -> None:
        codec.address(self.source, _WHAT)
        if self.phase not in PHASES:
            raise ModelError(f"{_WHAT}: phase must be one of {', '.join(PHASES)}, got {self.phase!r}")
        if not _REPLID.match(self.replid):
            raise ModelError(f"{_WHAT}: replid must be 40 hex digits, got {self.replid!r}")
        for name in ("db", "snapshot_offset", "offset", "snapshot_keys"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ModelError(f"{_WHAT}: {name} must be a non-negative integer, got {value!r}")
        if not self.slots_digest or not isinstance(self.slots_digest, str):
            raise ModelError(f"{_WHAT}: slots_digest must be a non-empty string")

    def encode(self) -> bytes:
        return codec.dump_object({
            "source": self.source, "db": self.db, "phase": self.phase, "replid": self.replid,
            "snapshot_offset": self.snapshot_offset, "offset": self.offset, "slots_digest": self.slots_digest,
            "snapshot_keys": self.snapshot_keys, "started_at": self.started_at, "updated_at": self.updated_at,
            "finished_at": self.finished_at,
        })

    @classmethod
    def decode(cls, raw: bytes | str) -> ImportState:
        obj = codec.load_object(raw, _WHAT)
        finished = codec.optional(obj, "finished_at", (int, float), _WHAT)
        return cls(
            source=codec.field(obj, "source", str, _WHAT),
            db=codec.field(obj, "db", int, _WHAT),
            phase=codec.field(obj, "phase", str, _WHAT),
            replid=codec.field(obj, "replid", str, _WHAT),
            snapshot_offset=codec.field(obj, "snapshot_offset", int, _WHAT),
            offset=codec.field(obj, "offset", int, _WHAT),
            slots_digest=codec.field(obj, "slots_digest", str, _WHAT),
            snapshot_keys=codec.field(obj, "snapshot_keys", int, _WHAT),
            started_at=codec.number(obj, "started_at", _WHAT),
            updated_at=codec.number(obj, "updated_at", _WHAT),
            finished_at=None if finished is None else float(finished),
        )


@dataclass(frozen=True, slots=True)
class ImportRunner:
    """The ``import-running`` znode (ephemeral): the one process running an import on the cluster."""

    host: str
    pid: int
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not self.host or not isinstance(self.host, str):
            raise ModelError("import-running: host must be a non-empty string")
        if isinstance(self.pid, bool) or not isinstance(self.pid, int) or self.pid <= 0:
            raise ModelError(f"import-running: pid must be a positive integer, got {self.pid!r}")

    def encode(self) -> bytes:
        return codec.dump_object({"host": self.host, "pid": self.pid, "started_at": self.started_at})

    @classmethod
    def decode(cls, raw: bytes | str) -> ImportRunner:
        what = "import-running"
        obj = codec.load_object(raw, what)
        return cls(host=codec.field(obj, "host", str, what), pid=codec.field(obj, "pid", int, what),
                   started_at=codec.number(obj, "started_at", what))
