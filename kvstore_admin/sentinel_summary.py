"""What ``kvstore-admin status`` shows of the sentinels: node health as they see it, the leader, failovers."""

from __future__ import annotations

import time
from typing import Any

from kvstore_cluster.sentinel_view import fresh_views
from kvstore_cluster.store import ClusterStore, StoreError

STALE_AFTER = 10.0  # a view older than this is reported as stale and does not count


def sentinel_summary(store: ClusterStore, stale_after: float = STALE_AFTER) -> dict[str, Any]:
    """A JSON-ready summary of the sentinels' view of ``store``'s cluster (blocking ZooKeeper calls).

    ``nodes[addr]["health"]`` is ``down`` if any fresh sentinel view lists it down, ``up`` if some
    fresh view probed it fine, ``unknown`` otherwise (no sentinel running, or none has seen it yet).
    """
    now = time.time()
    views = store.sentinel_views()
    fresh = fresh_views(views.items, stale_after, now)
    sentinels: dict[str, Any] = {
        sid: {"fresh": sid in fresh, "age": round(now - view.time, 3), "leader": view.leader, "down": sorted(view.down)}
        for sid, view in views.items.items()
    }
    for sid, error in views.malformed.items():
        sentinels[sid] = {"fresh": False, "age": None, "leader": False, "down": [], "error": error}

    nodes: dict[str, dict[str, Any]] = {}
    groups_error = None
    try:
        groups = store.read_groups().value
    except StoreError as exc:
        groups, groups_error = None, str(exc)
    if groups is not None:
        for g in groups:
            for addr in g.nodes:
                nodes[addr] = {"group": g.id, "role": "master" if addr == g.master else "replica"}
    for view in fresh.values():
        for addr in set(view.down) | set(view.nodes):
            nodes.setdefault(addr, {"group": None, "role": None})
    for addr, node in nodes.items():
        down_by = sorted(sid for sid, v in fresh.items() if addr in v.down)
        probes = {sid: v.nodes[addr].to_json() for sid, v in fresh.items() if addr in v.nodes}
        node["down_by"] = down_by
        node["down_since"] = min((fresh[s].down[addr] for s in down_by), default=None)
        node["probes"] = probes
        if down_by:
            node["health"] = "down"
        elif any(p["ok"] for p in probes.values()):
            node["health"] = "up"
        else:
            node["health"] = "unknown"

    records = store.failovers()
    failovers: dict[str, Any] = {gid: record.to_json() for gid, record in records.items.items()}
    failovers.update({gid: {"error": error} for gid, error in records.malformed.items()})

    out: dict[str, Any] = {
        "leader": store.sentinel_leader(),
        "sentinels": sentinels,
        "nodes": nodes,
        "failovers": failovers,
    }
    if groups_error is not None:
        out["groups_error"] = groups_error
    return out
