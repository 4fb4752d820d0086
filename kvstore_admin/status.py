"""Collect the cluster's state (ZooKeeper tables + a live probe of every node) and render it as text."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from kvstore_admin.reshard_report import progress_text
from kvstore_admin.sentinel_summary import sentinel_summary
from kvstore_cluster.model import Group
from kvstore_cluster.node import NODE_TIMEOUT, Node, NodeError
from kvstore_cluster.proxy_registration import ProxyRegistration
from kvstore_cluster.sentinel_view import SentinelView
from kvstore_cluster.slots import SLOT_COUNT, format_slot_ranges
from kvstore_cluster.store import ClusterStore, CorruptData, Records
from kvstore_cluster.zkauth import read_access


def _node_health(group: Group, probe: dict[str, Any]) -> dict[str, Any]:
    expected = "master" if probe["address"] == group.master else "replica"
    if not probe["up"]:
        problem = probe["error"]
    else:
        problem = group.replication_problem(probe["address"], probe["role"], probe["master"], probe["link_up"])
    return {**probe, "expected_role": expected, "ok": problem is None, "problem": problem}


async def _probe(address: str, timeout: float, password: str | None) -> dict[str, Any]:
    """Health of one node: never raises, reports ``up`` and the replication role, or the error."""
    try:
        async with Node(address, timeout, password) as node:
            found = await node.replication()
    except NodeError as exc:
        return {"address": address, "up": False, "error": str(exc)}
    return {"address": address, "up": True, "error": None, **found.to_json()}


async def _probe_all(addresses: list[str], timeout: float, password: str | None) -> dict[str, dict[str, Any]]:
    found = await asyncio.gather(*(_probe(a, timeout, password) for a in addresses))
    return dict(zip(addresses, found, strict=True))


def _access(store: ClusterStore) -> dict[str, str | None] | None:
    """Who may change and who may read the cluster (user names of the access record); None: open."""
    access = read_access(store.client, store.cluster, store.credentials)
    if access is None:
        return None
    return {"writer": access.writer.partition(":")[0],
            "reader": access.reader.partition(":")[0] if access.reader else None}


def records_json(records: Records[ProxyRegistration] | Records[SentinelView]) -> list[dict[str, Any]]:
    """Registrations or views as JSON items with their ids; the unreadable ones with why."""
    items = [{"id": k, **v.to_json()} for k, v in records.items.items()]
    items += [{"id": k, "error": error} for k, error in records.malformed.items()]
    return sorted(items, key=lambda item: item["id"])


def collect(store: ClusterStore, node_timeout: float = NODE_TIMEOUT,
            password: str | None = None) -> dict[str, Any]:
    """Everything ``status`` shows, as plain JSON-able data."""
    # The records of work in progress before the tables that work changes: a reshard or a failover
    # updates the tables first and removes its record last, so a record found gone means the tables
    # read next are already the finished ones (never "finished" beside slots still marked).
    view = _sentinel_view(store)
    in_progress = _reshard(store)
    meta = store.read_meta()
    groups = store.read_groups()
    slots = store.read_slots()
    proxies = records_json(store.proxies())
    sentinels = records_json(store.sentinel_views())
    probes = asyncio.run(_probe_all([a for g in groups.value for a in g.nodes], node_timeout, password))
    counts = slots.value.counts()
    problems: list[str] = []
    group_rows = []
    for g in groups.value:
        health = [_node_health(g, probes[a]) for a in g.nodes]
        problems += [h["problem"] for h in health if h["problem"]]
        if g.state != "ok":
            problems.append(f"group {g.id} is {g.state}")
        group_rows.append({
            **g.to_json(),
            "slots": counts.get(g.id, 0),
            "ranges": format_slot_ranges(slots.value.ranges_of(g.id)),
            "nodes": health,
        })
    unowned = len(slots.value.unowned())
    if unowned:
        problems.append(f"{unowned} slots have no owner (run 'kvstore-admin rebalance')")
    problems += [f"failover of group {gid} in progress" for gid in view.get("failovers", {})]
    if in_progress is not None and "error" in in_progress:
        problems.append(in_progress["error"])
    importing = _import(store)
    if importing is not None and "error" in importing:
        problems.append(importing["error"])
    rules = _keyrules(store)
    if "error" in rules:
        problems.append(rules["error"])
    elif rules["change"] is not None:
        problems.append(f"key rule change in progress ({rules['change']}): its keys' requests wait "
                        "until it is done ('kvstore-admin keyrule resume' if it stopped)")
    return {
        "cluster": store.cluster,
        "mode": meta.value.mode,
        "created_at": meta.value.created_at,
        "versions": {"groups": groups.version, "slots": slots.version},
        "zk_access": _access(store),
        "slots": {
            "total": SLOT_COUNT,
            "owned": SLOT_COUNT - unowned,
            "unowned": unowned,
            "migrating": [
                {"lo": m.lo, "hi": m.hi, "from": m.source, "to": m.target} for m in slots.value.migrating
            ],
        },
        "groups": group_rows,
        "reshard": in_progress,
        "keyrules": rules,
        "import": importing,
        "proxies": {"count": len(proxies), "items": proxies},
        "sentinels": {"count": len(sentinels), "items": sentinels},
        "sentinel_view": view,
        "healthy": not problems,
        "problems": problems,
    }


def _sentinel_view(store: ClusterStore) -> dict[str, Any]:
    """The sentinels' leader, their verdicts and failovers in progress."""
    try:
        return sentinel_summary(store)
    except Exception as exc:  # noqa: BLE001
        # Extra information only: a failure reading it must not hide the cluster's own status.
        return {"error": f"cannot read the sentinels' view ({exc})"}


def _import(store: ClusterStore) -> dict[str, Any] | None:
    """The import from a standalone Redis recorded on this cluster and whether a process runs it, or ``None``."""
    try:
        record = store.read_import()
        runner = store.read_import_runner()
    except CorruptData as exc:
        return {"error": str(exc)}
    if record is None:
        return None
    state = record.value
    return {"source": state.source, "db": state.db, "phase": state.phase, "offset": state.offset,
            "snapshot_keys": state.snapshot_keys, "started_at": state.started_at, "finished_at": state.finished_at,
            "running": None if runner is None else {"host": runner.value.host, "pid": runner.value.pid}}


def _reshard(store: ClusterStore) -> dict[str, Any] | None:
    """The reshard in progress (``reshard`` znode), ``None`` if there is none."""
    try:
        current = store.read_reshard()
    except CorruptData as exc:
        return {"error": str(exc)}
    if current is None:
        return None
    out = current.value.summary()
    try:
        progress = store.read_reshard_progress()
    except CorruptData as exc:
        out["progress"] = {"error": str(exc)}
    else:
        out["progress"] = None if progress is None else progress.to_json()
    return out


def _keyrules(store: ClusterStore) -> dict[str, Any]:
    """How many key rules, and the change in progress (its request), or why the record is unreadable."""
    try:
        record = store.read_keyrules()
    except CorruptData as exc:
        return {"error": str(exc)}
    change = record.value.change
    return {"rules": len(record.value.rules), "version": record.version,
            "change": None if change is None else change.request}


PROGRESS_STALE = 5.0  # seconds without news from the executor: it is not running any more


def reshard_text(r: dict[str, Any]) -> list[str]:
    if "error" in r:
        return [f"reshard: {r['error']}"]
    moving = ", ".join(f"{format_slot_ranges([(m['lo'], m['hi'])])} {m['from']}->{m['to']}" for m in r["moving"])
    live = r.get("progress")
    if not live or "error" in live or time.time() - live["updated_at"] > PROGRESS_STALE:
        live = None  # an executor that died leaves its record until its ZooKeeper session expires
    flags = "".join(f", {f}" for f in ("aborting", "no_data") if r[f]).replace("no_data", "--no-data")
    return [
        f"reshard in progress: step {r['step']}/{r['steps']}, phase {r['phase']}{flags}: slots {moving}; "
        f"{r['slots_done']}/{r['slots_total']} slots done, {r['keys_moved']} keys moved",
        *([f"  running: {progress_text(live)}"] if live else []),
        f"  request: {r['request_text']}; if no kvstore-admin runs it any more: "
        "'kvstore-admin reshard --resume' (or --abort)",
    ]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _health_text(node: dict[str, Any]) -> str:
    if not node["up"]:
        return "DOWN"
    if not node["ok"]:
        return "WRONG ROLE" if node["role"] != node["expected_role"] else "LINK DOWN"
    return "up"


def render(status: dict[str, Any]) -> str:
    s = status["slots"]
    lines = [
        f"cluster {status['cluster']} ({status['mode']} mode)  "
        f"groups v{status['versions']['groups']}  slots v{status['versions']['slots']}",
        f"slots: {s['owned']}/{s['total']} owned, {s['unowned']} unowned, {len(s['migrating'])} migrating",
    ]
    rules = status.get("keyrules") or {}
    if rules.get("rules"):
        lines.append(f"key rules: {rules['rules']} ('kvstore-admin keyrule list')")
    access = status.get("zk_access")
    if access:
        reader = f", readable by {access['reader']}" if access["reader"] else ""
        lines.append(f"ZooKeeper ACLs: writable by {access['writer']} only{reader}")
    if status.get("reshard"):
        lines += reshard_text(status["reshard"])
    importing = status.get("import")
    if importing and "error" not in importing:
        run = importing["running"]
        if importing["phase"] == "done":
            how = "done (cut over)"
        elif run:
            how = f"running (pid {run['pid']} on {run['host']})"
        else:
            how = "not running ('kvstore-admin import' resumes it)"
        lines.append(f"import from {importing['source']} db {importing['db']}: {importing['phase']}, {how}, "
                     f"{importing['snapshot_keys']:,} keys in the snapshot, stream offset {importing['offset']}")
    lines.append("")
    rows = []
    for g in status["groups"]:
        for i, n in enumerate(g["nodes"]):
            first = i == 0
            rows.append([
                g["id"] if first else "", g["state"] if first else "", g["slots"] if first else "",
                (g["ranges"] or "-") if first else "",
                n["address"], n["expected_role"], _health_text(n),
            ])
    if rows:
        lines.append(table(["GROUP", "STATE", "SLOTS", "RANGES", "NODE", "ROLE", "HEALTH"], rows))
    else:
        lines.append("no groups (add one with 'kvstore-admin group add')")
    lines.append("")
    leader = status.get("sentinel_view", {}).get("leader") or "none"
    lines.append(f"proxies: {status['proxies']['count']}  sentinels: {status['sentinels']['count']} "
                 f"(leader: {leader})")
    if status["healthy"]:
        lines.append("healthy")
    else:
        lines.append("problems:")
        lines += [f"  - {p}" for p in status["problems"]]
    return "\n".join(lines)


def render_proxies(proxies: list[dict[str, Any]]) -> str:
    """``proxies`` (as ``records_json`` gives them) as a table."""
    if not proxies:
        return "no proxy registered"
    rows = [[p["id"], p.get("address", "?"), p.get("pid", "?"), p.get("slots_version", "?"),
             p.get("groups_version", "?"), p.get("error", "")] for p in proxies]
    return table(["ID", "ADDRESS", "PID", "SLOTS V", "GROUPS V", "PROBLEM"], rows)
