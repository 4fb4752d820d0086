"""What ``kvstore-admin status`` shows of the sentinels: node health as they see it, the leader, failovers."""

from __future__ import annotations

import json
import time
from typing import Any

from kazoo.exceptions import NoNodeError

from kvstore_cluster import paths
from kvstore_cluster.store import ClusterStore, StoreError
from kvstore_sentinel.election import current_leader
from kvstore_sentinel.view import fresh_views

STALE_AFTER = 10.0  # a view older than this is reported as stale and does not count


def sentinel_view(store: ClusterStore, stale_after: float = STALE_AFTER) -> dict[str, Any]:
    """A JSON-ready summary of the sentinels' view of ``store``'s cluster (blocking kazoo calls).

    ``nodes[addr]["health"]`` is ``down`` if any fresh sentinel view lists it down, ``up`` if some
    fresh view probed it fine, ``unknown`` otherwise (no sentinel running, or none has seen it yet).
    """
    now = time.time()
    cluster = store.cluster
    raw_views = store.sentinels()
    fresh = fresh_views(raw_views, stale_after, now)
    sentinels = {}
    for sid, view in raw_views.items():
        at = view.get("time") if isinstance(view, dict) else None
        sentinels[sid] = {
            "fresh": sid in fresh,
            "age": round(now - at, 3) if isinstance(at, (int, float)) else None,
            "leader": bool(view.get("leader")) if isinstance(view, dict) else False,
            "down": sorted(view.get("down", {})) if isinstance(view, dict) else [],
            **({"error": view["error"]} if isinstance(view, dict) and "error" in view else {}),
        }

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
        for addr in set(view["down"]) | set(view.get("nodes", {})):
            if isinstance(addr, str):
                nodes.setdefault(addr, {"group": None, "role": None})
    for addr, node in nodes.items():
        down_by = sorted(sid for sid, v in fresh.items() if addr in v["down"])
        probes = {sid: v["nodes"][addr] for sid, v in fresh.items()
                  if isinstance(v.get("nodes"), dict) and isinstance(v["nodes"].get(addr), dict)}
        node["down_by"] = down_by
        node["down_since"] = min((fresh[s]["down"][addr] for s in down_by), default=None)
        node["probes"] = probes
        if down_by:
            node["health"] = "down"
        elif any(p.get("ok") for p in probes.values()):
            node["health"] = "up"
        else:
            node["health"] = "unknown"

    failovers: dict[str, Any] = {}
    try:
        names = store.client.get_children(paths.failovers(cluster))
    except NoNodeError:
        names = []
    for name in sorted(names):
        try:
            data, _ = store.client.get(f"{paths.failovers(cluster)}/{name}")
        except NoNodeError:
            continue
        try:
            failovers[name] = json.loads(data)
        except ValueError:
            failovers[name] = {"error": "malformed JSON"}

    out: dict[str, Any] = {
        "leader": current_leader(store.client, paths.sentinel_leader(cluster)),
        "sentinels": sentinels,
        "nodes": nodes,
        "failovers": failovers,
    }
    if groups_error is not None:
        out["groups_error"] = groups_error
    return out
