"""A sentinel's published view (``sentinels/<id>``) and the quorum verdict over all views."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from kvstore_sentinel.probe import Prober

VIEW_FORMAT = 1


def build_view(sentinel_id: str, prober: Prober, leader: bool) -> dict[str, Any]:
    """The JSON a sentinel publishes: nodes it sees down (since when), every node's last probe, its time."""
    return {
        "format": VIEW_FORMAT,
        "id": sentinel_id,
        "time": round(time.time(), 3),
        "leader": leader,
        "down": {a: round(since, 3) for a, since in sorted(prober.down_nodes().items())},
        "nodes": {a: h.last.to_json() for a, h in sorted(prober.nodes.items()) if h.last is not None},
    }


def fresh_views(views: Mapping[str, Any], stale_after: float, now: float | None = None) -> dict[str, dict[str, Any]]:
    """Views that are well-formed and were published less than ``stale_after`` seconds ago.

    A paused sentinel keeps its ephemeral node until its session expires; its frozen view must not
    keep voting, so views carry their publication time and old ones are ignored.
    """
    now = time.time() if now is None else now
    out: dict[str, dict[str, Any]] = {}
    for name, view in views.items():
        if not isinstance(view, dict) or not isinstance(view.get("down"), dict):
            continue
        at = view.get("time")
        if not isinstance(at, (int, float)) or now - at > stale_after:
            continue
        out[name] = view
    return out


def objectively_down(views: Mapping[str, dict[str, Any]], quorum: int) -> dict[str, int]:
    """Nodes that at least ``quorum`` views list as down -> how many views agree."""
    votes: dict[str, int] = {}
    for view in views.values():
        for addr in view["down"]:
            if isinstance(addr, str):
                votes[addr] = votes.get(addr, 0) + 1
    return {a: n for a, n in votes.items() if n >= quorum}
