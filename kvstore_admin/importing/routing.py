"""Where an imported key goes (the cluster's slot function and slot table) and which arguments of a command are keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvstore_admin.errors import USER_ERROR, AdminError
from kvstore_cluster.model import Groups, SlotTable
from kvstore_cluster.slots import SLOT_COUNT, Slotter, format_slot_ranges, slots_to_ranges


class Router:
    """Key -> index of the group owning its slot (into ``ids`` / ``masters``), by the cluster's key rules."""

    def __init__(self, table: SlotTable, groups: Groups, slotter: Slotter | None = None):
        self.key_slot = (slotter or Slotter()).key_slot
        owners = table.owners()
        unowned = [s for s in range(SLOT_COUNT) if owners[s] is None]
        if unowned:
            raise AdminError(f"slots {format_slot_ranges(slots_to_ranges(unowned))} have no owner, so their keys "
                             "would have nowhere to go; run 'kvstore-admin rebalance' first", USER_ERROR)
        self.ids = sorted({o for o in owners if o is not None})
        index = {g: i for i, g in enumerate(self.ids)}
        self.by_slot = [index[o] for o in owners if o is not None]
        self.masters: list[str] = []
        for gid in self.ids:
            g = groups.get(gid)
            if g is None:
                raise AdminError(f"slots are owned by group {gid!r}, which does not exist", USER_ERROR)
            if g.state != "ok":
                raise AdminError(f"group {gid} is {g.state}; import when every group owning slots is ok", USER_ERROR)
            self.masters.append(g.master)

    def group(self, key: bytes) -> int:
        # The one place the import computes a slot: with the cluster's key rules.
        return self.by_slot[self.key_slot(key)]

    def groups(self, keys: list[bytes]) -> list[int]:
        """The group index of each key, in order."""
        return list(map(self.group, keys))


class UnknownCommand(Exception):
    """A command the cluster's Redis does not know (a module's, or a newer version's)."""


@dataclass(frozen=True, slots=True)
class KeySpec:
    first: int
    last: int
    step: int
    movable: bool  # key positions depend on the arguments: ask the server (COMMAND GETKEYSANDFLAGS)
    subcommands: dict[bytes, KeySpec] | None = None


def _spec(entry: list[Any]) -> KeySpec:
    flags = {f.lower() for f in entry[2] if isinstance(f, bytes)}
    subs = None
    if len(entry) > 9 and entry[9]:
        subs = {sub[0].lower(): _spec(sub) for sub in entry[9]}
    return KeySpec(int(entry[3]), int(entry[4]), int(entry[5]), b"movablekeys" in flags, subs)


class CommandTable:
    """Key positions of every command, from the cluster's own ``COMMAND`` reply."""

    def __init__(self, command_reply: list[Any]):
        self.specs: dict[bytes, KeySpec] = {}
        for entry in command_reply:
            if isinstance(entry, list) and len(entry) >= 6 and isinstance(entry[0], bytes):
                self.specs[entry[0].lower()] = _spec(entry)
        if b"set" not in self.specs:
            raise AdminError("the cluster's COMMAND reply lists no SET; is it Redis?")

    def keys(self, name: bytes, args: list[bytes]) -> list[bytes] | None:
        """The key arguments of ``args`` (``name`` is ``args[0]`` lowercased); ``None``: ask the server."""
        spec = self.specs.get(name)
        if spec is None:
            raise UnknownCommand(name.decode(errors="replace"))
        if spec.subcommands is not None and len(args) > 1:
            sub = spec.subcommands.get(name + b"|" + args[1].lower())
            if sub is None:
                raise UnknownCommand(f"{name.decode(errors='replace')} {args[1].decode(errors='replace')}")
            spec = sub
        if spec.movable:
            return None
        if spec.first <= 0 or spec.first >= len(args):
            return []
        last = spec.last if spec.last >= 0 else len(args) + spec.last
        return args[spec.first : last + 1 : spec.step]
