"""``kvstore-admin check``: scan every group's master for keys that live in a group not owning their slot."""

from __future__ import annotations

import asyncio
from typing import Any

from kvstore_admin.errors import MISPLACED
from kvstore_cluster.model import Group
from kvstore_cluster.node import Node, NodeError
from kvstore_cluster.slots import SLOT_COUNT, key_slot
from kvstore_cluster.store import ClusterStore

SCAN_COUNT = 1000
SCAN_TIMEOUT = 10.0

EXAMPLES = 5

EXIT_CODES_HELP = f"""\b
Check exit codes (besides the ones of every command):
  0   every key lives in the group that owns its slot
  {MISPLACED}  misplaced keys found (or a key of a migrating slot on both source and target)
"""


def _show(key: bytes) -> str:
    return key.decode(errors="backslashreplace")


async def _scan(group: Group, owners: tuple[str | None, ...], migrating: list[tuple[str, str] | None],
                password: str | None) -> tuple[dict[str, Any], dict[bytes, str]]:
    """Misplaced keys on ``group``'s master, and the keys of migrating slots it holds."""
    found: dict[str, Any] = {"group": group.id, "master": group.master, "keys": 0, "misplaced": 0, "examples": []}
    seen_here: dict[bytes, str] = {}
    async with Node(group.master, SCAN_TIMEOUT, password) as node:
        async for keys in node.scan(SCAN_COUNT):
            found["keys"] += len(keys)
            for k in keys:
                s = key_slot(k)
                if owners[s] == group.id:
                    if migrating[s] is not None:
                        seen_here[k] = group.id
                    continue
                mig = migrating[s]
                if mig is not None and mig[1] == group.id:
                    seen_here[k] = group.id
                    continue
                found["misplaced"] += 1
                if len(found["examples"]) < EXAMPLES:
                    found["examples"].append({"key": _show(k), "slot": s, "owner": owners[s]})
    return found, seen_here


def check(store: ClusterStore, password: str | None = None) -> dict[str, Any]:
    """Per-group counts of misplaced keys with examples; ``ok`` is False if any is found.

    A key of a migrating slot may be on the source or on the target, not on both. The slot
    table is read once: run this on a quiet cluster, or expect keys of slots whose ownership
    changed during the scan to show up.
    """
    groups = store.read_groups().value
    table = store.read_slots().value
    owners = table.owners()
    # slot -> (source, target) for migrating slots
    migrating: list[tuple[str, str] | None] = [None] * SLOT_COUNT
    for m in table.migrating:
        for s in range(m.lo, m.hi + 1):
            migrating[s] = (m.source, m.target)
    in_flight: dict[str, dict[bytes, str]] = {}  # migrating keys seen, by the group holding them
    report = []
    total = 0
    for g in groups:
        if g.state == "down":
            # Its keys are not served (cache mode dropped them); its node may well be dead.
            report.append({"group": g.id, "master": g.master, "keys": 0, "misplaced": 0, "examples": [],
                           "skipped": "group is down"})
            continue
        try:
            found, seen_here = asyncio.run(_scan(g, owners, migrating, password))
        except NodeError as exc:
            raise NodeError(f"cannot scan group {g.id}: {exc}") from None
        in_flight[g.id] = seen_here
        total += found["misplaced"]
        report.append(found)
    both = []
    for m in table.migrating:
        src, dst = in_flight.get(m.source, {}), in_flight.get(m.target, {})
        for k in src:
            if k in dst and m.lo <= key_slot(k) <= m.hi:
                both.append({"key": _show(k), "slot": key_slot(k), "source": m.source, "target": m.target})
    return {"ok": total == 0 and not both, "misplaced": total, "groups": report,
            "on_both_sides": len(both), "on_both_examples": both[:EXAMPLES]}


def render(found: dict[str, Any]) -> str:
    lines = []
    for g in found["groups"]:
        if g.get("skipped"):
            lines.append(f"{g['group']} ({g['master']}): skipped, {g['skipped']}")
            continue
        lines.append(f"{g['group']} ({g['master']}): {g['keys']} keys, {g['misplaced']} misplaced")
        for ex in g["examples"]:
            lines.append(f"  {ex['key']!r} slot {ex['slot']} belongs to {ex['owner'] or 'nobody'}")
    if found["on_both_sides"]:
        lines.append(f"{found['on_both_sides']} keys of migrating slots exist on both source and target:")
        for ex in found["on_both_examples"]:
            lines.append(f"  {ex['key']!r} slot {ex['slot']} ({ex['source']} and {ex['target']})")
    lines.append("ok: every key is in the group that owns its slot" if found["ok"]
                 else f"MISPLACED: {found['misplaced']} keys in a group that does not own their slot"
                 + (f", {found['on_both_sides']} on both sides of a migration" if found["on_both_sides"] else ""))
    return "\n".join(lines)
