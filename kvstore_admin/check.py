"""``kvstore-admin check``: scan every group's master for keys that live in a group not owning their slot."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from kvstore_admin.errors import MISPLACED, SETTINGS_DIFFER
from kvstore_cluster.keyrules import KeyRules
from kvstore_cluster.model import Group
from kvstore_cluster.node import Node, NodeError
from kvstore_cluster.node_config import TUNABLES, as_dict
from kvstore_cluster.slots import SLOT_COUNT
from kvstore_cluster.store import ClusterStore

SCAN_COUNT = 1000
SCAN_TIMEOUT = 10.0

EXAMPLES = 5

EXIT_CODES_HELP = f"""\b
Check exit codes (besides the ones of every command):
  0   every key lives in the group that owns its slot, and the groups agree on their settings
  {MISPLACED}  misplaced keys found (or a key of a migrating slot on both source and target)
  {SETTINGS_DIFFER}  keys are fine, but a parameter or the function libraries differ between groups
"""


def _show(key: bytes) -> str:
    return key.decode(errors="backslashreplace")


async def _scan(group: Group, owners: tuple[str | None, ...], migrating: list[tuple[str, str] | None],
                rules: KeyRules, password: str | None) -> tuple[dict[str, Any], dict[bytes, str]]:
    """Misplaced keys on ``group``'s master, and the keys of migrating slots it holds.

    Slots are computed with the cluster's key rules; while a rule change is in progress, a key
    it moves may be in the group of its slot under either the old or the new rules.
    """
    key_slot = rules.slotter().key_slot
    after = rules.target_slotter().key_slot if rules.change is not None else None
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
                if after is not None and owners[after(k)] == group.id:
                    continue
                found["misplaced"] += 1
                if len(found["examples"]) < EXAMPLES:
                    found["examples"].append({"key": _show(k), "slot": s, "owner": owners[s]})
    return found, seen_here


async def _settings(group: Group, password: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """A group master's parameters (CONFIG GET *) and function libraries (name -> SHA1 of the code)."""
    async with Node(group.master, SCAN_TIMEOUT, password) as node:
        params = as_dict(await node.call("CONFIG", "GET", "*", what="CONFIG GET"))
        listing = await node.call("FUNCTION", "LIST", "WITHCODE", what="FUNCTION LIST")
    libraries = {}
    for lib in listing or ():
        fields = dict(zip(lib[::2], lib[1::2], strict=False))
        code = fields.get(b"library_code") or b""
        libraries[_show(fields.get(b"library_name") or b"")] = hashlib.sha1(code).hexdigest()
    return params, libraries


def compare_settings(groups: list[Group], password: str | None) -> dict[str, Any]:
    """The tunables set cluster-wide (CONFIG SET through a proxy) and the function libraries that differ
    between groups."""
    seen: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    for g in groups:
        try:
            seen[g.id] = asyncio.run(_settings(g, password))
        except NodeError as exc:
            raise NodeError(f"cannot read the settings of group {g.id}: {exc}") from None
    config: dict[str, dict[str, str | None]] = {}
    names = sorted({p for params, _ in seen.values() for p in params} & TUNABLES)
    for name in names:
        values = {gid: params.get(name) for gid, (params, _) in seen.items()}
        if len(set(values.values())) > 1:
            config[name] = values
    libraries = {gid: sorted(libs) for gid, (_, libs) in seen.items()}
    codes = {tuple(sorted(libs.items())) for _, libs in seen.values()}
    return {"config_differs": config, "functions_differ": libraries if len(codes) > 1 else {}}


def check(store: ClusterStore, password: str | None = None) -> dict[str, Any]:
    """Per-group counts of misplaced keys with examples; ``ok`` is False if any is found.

    A key of a migrating slot may be on the source or on the target, not on both. The slot
    table is read once: run this on a quiet cluster, or expect keys of slots whose ownership
    changed during the scan to show up.
    """
    groups = store.read_groups().value
    table = store.read_slots().value
    rules = store.read_keyrules().value
    key_slot = rules.slotter().key_slot
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
            found, seen_here = asyncio.run(_scan(g, owners, migrating, rules, password))
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
    settings = compare_settings([g for g in groups if g.state != "down"], password)
    return {"ok": total == 0 and not both, "misplaced": total, "groups": report,
            "on_both_sides": len(both), "on_both_examples": both[:EXAMPLES],
            "consistent": not settings["config_differs"] and not settings["functions_differ"], **settings}


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
    for name, values in found["config_differs"].items():
        lines.append(f"config {name} differs between groups: "
                     + ", ".join(f"{gid} {v!r}" for gid, v in values.items())
                     + " (CONFIG SET through a proxy sets it on every node)")
    if found["functions_differ"]:
        lines.append("function libraries differ between groups: "
                     + "; ".join(f"{gid} [{', '.join(libs)}]" for gid, libs in found["functions_differ"].items())
                     + " (FUNCTION LOAD REPLACE through a proxy loads a library on every group)")
    lines.append("ok: every key is in the group that owns its slot" if found["ok"]
                 else f"MISPLACED: {found['misplaced']} keys in a group that does not own their slot"
                 + (f", {found['on_both_sides']} on both sides of a migration" if found["on_both_sides"] else ""))
    return "\n".join(lines)
