"""This sentinel's view as it publishes it, and the quorum verdict over every sentinel's fresh view."""

from __future__ import annotations

import time
from collections.abc import Mapping

from kvstore_cluster.sentinel_view import SentinelView
from kvstore_sentinel.probe import Prober


def build_view(sentinel_id: str, prober: Prober, leader: bool) -> SentinelView:
    """What a sentinel publishes: nodes it sees down (since when), every node's last probe, the time."""
    return SentinelView(
        id=sentinel_id, time=time.time(), leader=leader, down=prober.down_nodes(),
        nodes={a: h.last for a, h in prober.nodes.items() if h.last is not None},
    )


def objectively_down(views: Mapping[str, SentinelView], quorum: int) -> dict[str, int]:
    """Nodes that at least ``quorum`` views list as down -> how many views agree."""
    votes: dict[str, int] = {}
    for view in views.values():
        for addr in view.down:
            votes[addr] = votes.get(addr, 0) + 1
    return {a: n for a, n in votes.items() if n >= quorum}
