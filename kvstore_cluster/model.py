"""The cluster model (meta, groups, slot table, migrations) as frozen dataclasses with strict JSON."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from kvstore_cluster import codec
from kvstore_cluster.codec import FORMAT_VERSION, ModelError, parse_address
from kvstore_cluster.slots import SLOT_COUNT, merge_ranges

MODES = ("cache", "datastore")
GROUP_STATES = ("ok", "failing_over", "down")


# --- meta --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Meta:
    mode: str
    created_at: float
    slot_count: int = SLOT_COUNT

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ModelError(f"meta: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.slot_count != SLOT_COUNT:
            raise ModelError(f"meta: slot_count must be {SLOT_COUNT}, got {self.slot_count!r}")

    def encode(self) -> bytes:
        return codec.dump_object({"mode": self.mode, "created_at": self.created_at, "slot_count": self.slot_count})

    @classmethod
    def decode(cls, raw: bytes | str) -> Meta:
        obj = codec.load_object(raw, "meta")
        return cls(
            mode=codec.field(obj, "mode", str, "meta"),
            created_at=float(codec.field(obj, "created_at", (int, float), "meta")),
            slot_count=codec.field(obj, "slot_count", int, "meta"),
        )


# --- groups ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    master: str
    replicas: tuple[str, ...] = ()
    state: str = "ok"
    # The group's nodes speak TLS (redis-server tls-port); clients of them verify them with the CA
    # each process is given (kvstore_cluster/redis_tls.py). Absent in the record: false.
    tls: bool = False

    def __post_init__(self) -> None:
        what = f"group {self.id!r}"
        codec.group_id(self.id, "group")
        codec.address(self.master, what)
        for r in self.replicas:
            codec.address(r, what)
        if self.state not in GROUP_STATES:
            raise ModelError(f"{what}: state must be one of {', '.join(GROUP_STATES)}, got {self.state!r}")
        nodes = (self.master, *self.replicas)
        if len(set(nodes)) != len(nodes):
            raise ModelError(f"{what}: a node appears twice")

    @property
    def nodes(self) -> tuple[str, ...]:
        return (self.master, *self.replicas)

    def replication_problem(self, address: str, role: str | None, master: str | None,
                            link_up: bool | None) -> str | None:
        """What is wrong with an answering node's replication as this group expects it, or None.

        The one rule behind ``kvstore-admin status``'s health column and the sentinel's
        ``kvstore_sentinel_node_diverged`` metric.
        """
        expected = "master" if address == self.master else "replica"
        if role != expected:
            return f"node {address} is a {role}, expected {expected}"
        if expected == "replica" and master != self.master:
            return f"replica {address} follows {master}, not the master {self.master}"
        if expected == "replica" and not link_up:
            return f"replica {address} has its link to {self.master} down"
        return None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "master": self.master, "replicas": list(self.replicas),
                               "state": self.state}
        if self.tls:
            out["tls"] = True
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Group:
        if not isinstance(obj, dict):
            raise ModelError("groups: each group must be a JSON object")
        gid = codec.group_id(obj.get("id"), "groups")
        what = f"group {gid!r}"
        replicas = codec.field(obj, "replicas", list, what)
        if not all(isinstance(r, str) for r in replicas):
            raise ModelError(f"{what}: replicas must be HOST:PORT strings")
        return cls(
            id=gid,
            master=codec.field(obj, "master", str, what),
            replicas=tuple(replicas),
            state=codec.field(obj, "state", str, what),
            tls=bool(codec.optional(obj, "tls", bool, what)),
        )


@dataclass(frozen=True, slots=True)
class Groups:
    """All groups of a cluster, in a stable order."""

    groups: tuple[Group, ...] = ()

    def __post_init__(self) -> None:
        ids = [g.id for g in self.groups]
        if len(set(ids)) != len(ids):
            raise ModelError("groups: a group id appears twice")
        seen: dict[str, str] = {}
        for g in self.groups:
            for node in g.nodes:
                if node in seen:
                    raise ModelError(f"groups: node {node} is in both {seen[node]!r} and {g.id!r}")
                seen[node] = g.id

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def get(self, group_id: str) -> Group | None:
        for g in self.groups:
            if g.id == group_id:
                return g
        return None

    def owner_of_node(self, address: str) -> Group | None:
        for g in self.groups:
            if address in g.nodes:
                return g
        return None

    def ids(self) -> list[str]:
        return [g.id for g in self.groups]

    def put(self, group: Group) -> Groups:
        """Return a copy with ``group`` added or replacing the group of the same id."""
        if self.get(group.id) is None:
            return Groups((*self.groups, group))
        return Groups(tuple(group if g.id == group.id else g for g in self.groups))

    def without(self, group_id: str) -> Groups:
        return Groups(tuple(g for g in self.groups if g.id != group_id))

    def encode(self) -> bytes:
        return codec.dump_object({"groups": [g.to_json() for g in self.groups]})

    @classmethod
    def decode(cls, raw: bytes | str) -> Groups:
        obj = codec.load_object(raw, "groups")
        items = codec.field(obj, "groups", list, "groups")
        return cls(tuple(Group.from_json(item) for item in items))


# --- slot table --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    """Slots ``lo..hi`` (inclusive) moving from group ``source`` to group ``target``."""

    lo: int
    hi: int
    source: str
    target: str

    def __post_init__(self) -> None:
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (self.lo, self.hi)):
            raise ModelError(f"migration bounds must be integers, got {self.lo!r}-{self.hi!r}")
        if not (0 <= self.lo <= self.hi < SLOT_COUNT):
            raise ModelError(f"migrating range {self.lo}-{self.hi} is outside 0-{SLOT_COUNT - 1}")
        codec.group_id(self.source, f"migration {self.lo}-{self.hi}")
        codec.group_id(self.target, f"migration {self.lo}-{self.hi}")
        if self.source == self.target:
            raise ModelError(f"migrating {self.lo}-{self.hi} from a group to itself")

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1

    def to_json(self) -> list[Any]:
        return [self.lo, self.hi, self.source, self.target]

    @classmethod
    def from_json(cls, item: Any, what: str) -> Migration:
        if not (isinstance(item, list) and len(item) == 4):
            raise ModelError(f"{what}: each migration must be [low, high, from, to]")
        try:
            return cls(item[0], item[1], item[2], item[3])
        except ModelError as exc:
            raise ModelError(f"{what}: {exc}") from None


@dataclass(frozen=True, slots=True)
class SlotTable:
    """Owner of every slot as ranges (``None`` = unowned), plus the migrating set.

    ``ranges`` is canonical: sorted, non-overlapping, adjacent equal owners merged.
    """

    ranges: tuple[tuple[int, int, str], ...] = ()
    migrating: tuple[Migration, ...] = ()
    _owners: tuple[str | None, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        prev_hi = -1
        for item in self.ranges:
            if not (isinstance(item, tuple) and len(item) == 3):
                raise ModelError("slots: each range must be [low, high, group]")
            lo, hi, gid = item
            if not (isinstance(lo, int) and isinstance(hi, int)) or isinstance(lo, bool) or isinstance(hi, bool):
                raise ModelError(f"slots: range bounds must be integers, got {lo!r}-{hi!r}")
            if not (0 <= lo <= hi < SLOT_COUNT):
                raise ModelError(f"slots: range {lo}-{hi} is outside 0-{SLOT_COUNT - 1}")
            if lo <= prev_hi:
                raise ModelError(f"slots: range {lo}-{hi} overlaps or is out of order")
            codec.group_id(gid, "slots")
            prev_hi = hi
        owners: list[str | None] = [None] * SLOT_COUNT
        for lo, hi, gid in self.ranges:
            owners[lo : hi + 1] = [gid] * (hi - lo + 1)
        seen: set[int] = set()
        for m in self.migrating:
            for s in range(m.lo, m.hi + 1):
                if owners[s] != m.source:
                    raise ModelError(f"slots: slot {s} migrates from {m.source!r} but is owned by {owners[s]!r}")
                if s in seen:
                    raise ModelError(f"slots: slot {s} is in two migrations")
                seen.add(s)
        object.__setattr__(self, "_owners", tuple(owners))

    # reading

    def owner(self, slot: int) -> str | None:
        return self._owners[slot]

    def owners(self) -> tuple[str | None, ...]:
        """The owner of each of the 16384 slots."""
        return self._owners

    def migration_of(self, slot: int) -> Migration | None:
        for m in self.migrating:
            if m.lo <= slot <= m.hi:
                return m
        return None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for lo, hi, gid in self.ranges:
            out[gid] = out.get(gid, 0) + hi - lo + 1
        return out

    def unowned(self) -> list[int]:
        return [s for s, o in enumerate(self._owners) if o is None]

    def ranges_of(self, group_id: str) -> list[tuple[int, int]]:
        return [(lo, hi) for lo, hi, gid in self.ranges if gid == group_id]

    # building

    @classmethod
    def from_owners(cls, owners: list[str | None] | tuple[str | None, ...],
                    migrating: tuple[Migration, ...] = ()) -> SlotTable:
        if len(owners) != SLOT_COUNT:
            raise ModelError(f"slots: expected {SLOT_COUNT} owners, got {len(owners)}")
        ranges: list[tuple[int, int, str]] = []
        start = 0
        for s in range(1, SLOT_COUNT + 1):
            if s == SLOT_COUNT or owners[s] != owners[start]:
                gid = owners[start]
                if gid is not None:
                    ranges.append((start, s - 1, gid))
                start = s
        return cls(tuple(ranges), migrating)

    def assign(self, slots: list[tuple[int, int]], group_id: str) -> SlotTable:
        """Return a copy with the given inclusive ranges owned by ``group_id``."""
        owners = list(self._owners)
        for lo, hi in slots:
            owners[lo : hi + 1] = [group_id] * (hi - lo + 1)
        return SlotTable.from_owners(owners, self.migrating)

    def with_migrating(self, migrating: tuple[Migration, ...]) -> SlotTable:
        return replace(self, migrating=migrating)

    # encoding

    def encode(self) -> bytes:
        return codec.dump_object({
            "ranges": [list(r) for r in self.ranges],
            "migrating": [m.to_json() for m in self.migrating],
        })

    @classmethod
    def decode(cls, raw: bytes | str) -> SlotTable:
        obj = codec.load_object(raw, "slots")
        ranges = codec.field(obj, "ranges", list, "slots")
        migrating = codec.field(obj, "migrating", list, "slots")
        for item in ranges:
            if not (isinstance(item, list) and len(item) == 3):
                raise ModelError("slots: each range must be [low, high, group]")
        return cls(
            tuple((r[0], r[1], r[2]) for r in ranges),
            tuple(Migration.from_json(m, "slots") for m in migrating),
        )


def even_split(group_ids: list[str]) -> list[tuple[int, int, str]]:
    """Contiguous, even ranges of all slots over ``group_ids`` (sizes differ by at most one)."""
    n = len(group_ids)
    if n == 0:
        return []
    base, extra = divmod(SLOT_COUNT, n)
    out, lo = [], 0
    for i, gid in enumerate(group_ids):
        size = base + (1 if i < extra else 0)
        out.append((lo, lo + size - 1, gid))
        lo += size
    return out


def assign_unowned(table: SlotTable, group_ids: list[str]) -> SlotTable:
    """Give unowned slots to ``group_ids`` so their counts become as even as possible.

    Only unowned slots change hands; owned slots never move (moving data is resharding's job).
    """
    if not group_ids:
        raise ModelError("no groups to assign slots to")
    owners = list(table.owners())
    counts = {g: 0 for g in group_ids}
    for o in owners:
        if o in counts:
            counts[o] += 1
    free = [s for s, o in enumerate(owners) if o is None]
    # Fill the emptiest group first, handing out contiguous runs of free slots.
    total = sum(counts.values()) + len(free)
    base, extra = divmod(total, len(group_ids))
    order = sorted(group_ids, key=lambda g: (counts[g], group_ids.index(g)))
    targets = {g: base + (1 if i < extra else 0) for i, g in enumerate(order)}
    pos = 0
    for g in order:
        want = max(0, targets[g] - counts[g])
        for s in free[pos : pos + want]:
            owners[s] = g
        pos += want
    # sum(wants) >= len(free) because sum(targets) == owned + free, so no slot is left over.
    return SlotTable.from_owners(owners, table.migrating)


__all__ = [
    "FORMAT_VERSION", "MODES", "GROUP_STATES", "ModelError", "Meta", "Group", "Groups",
    "Migration", "SlotTable", "even_split", "assign_unowned", "parse_address", "merge_ranges",
]
