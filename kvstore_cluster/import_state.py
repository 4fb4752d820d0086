"""The ``import`` znode: an import from a standalone Redis, and where it is (written by ``kvstore-admin import``).

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
from typing import Any

from kvstore_cluster import paths
from kvstore_cluster.model import ModelError, SlotTable, _dump, _field, _load, parse_address
from kvstore_cluster.store import ClusterStore, CorruptData, Create, Delete, Set, Versioned

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
        try:
            parse_address(self.source)
        except ValueError as exc:
            raise ModelError(f"{_WHAT}: {exc}") from None
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
        return _dump({
            "source": self.source, "db": self.db, "phase": self.phase, "replid": self.replid,
            "snapshot_offset": self.snapshot_offset, "offset": self.offset, "slots_digest": self.slots_digest,
            "snapshot_keys": self.snapshot_keys, "started_at": self.started_at, "updated_at": self.updated_at,
            "finished_at": self.finished_at,
        })

    @classmethod
    def decode(cls, raw: bytes | str) -> ImportState:
        obj = _load(raw, _WHAT)
        finished = obj.get("finished_at")
        if finished is not None and (isinstance(finished, bool) or not isinstance(finished, int | float)):
            raise ModelError(f"{_WHAT}: field 'finished_at' has the wrong type ({type(finished).__name__})")
        return cls(
            source=_field(obj, "source", str, _WHAT),
            db=_field(obj, "db", int, _WHAT),
            phase=_field(obj, "phase", str, _WHAT),
            replid=_field(obj, "replid", str, _WHAT),
            snapshot_offset=_field(obj, "snapshot_offset", int, _WHAT),
            offset=_field(obj, "offset", int, _WHAT),
            slots_digest=_field(obj, "slots_digest", str, _WHAT),
            snapshot_keys=_field(obj, "snapshot_keys", int, _WHAT),
            started_at=float(_field(obj, "started_at", (int, float), _WHAT)),
            updated_at=float(_field(obj, "updated_at", (int, float), _WHAT)),
            finished_at=None if finished is None else float(finished),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "db": self.db, "phase": self.phase, "replid": self.replid,
            "snapshot_offset": self.snapshot_offset, "offset": self.offset, "snapshot_keys": self.snapshot_keys,
            "started_at": self.started_at, "updated_at": self.updated_at, "finished_at": self.finished_at,
        }


def read(store: ClusterStore) -> Versioned[ImportState] | None:
    """The recorded import, or ``None``; ``CorruptData`` if the znode holds garbage."""
    path = paths.import_state(store.cluster)
    if store.client.exists(path) is None:
        store.read_meta()  # a missing cluster is an error, not "no import"
        return None
    raw, version = store.read_raw(path)
    try:
        return Versioned(ImportState.decode(raw), version)
    except ModelError as exc:
        raise CorruptData(f"{path} holds malformed data: {exc}") from None


def write(store: ClusterStore, state: ImportState, version: int | None) -> int:
    """Create the record (``version=None``) or replace the one read at ``version``; returns the new version."""
    path = paths.import_state(store.cluster)
    if version is None:
        store.commit([Create(path, state.encode())])
        return 0
    store.commit([Set(path, state.encode(), version)])
    return version + 1


def delete(store: ClusterStore, version: int = -1) -> None:
    store.commit([Delete(paths.import_state(store.cluster), version)])
