"""The ``sentinel-leader/`` znodes: one ephemeral sequential node per contending sentinel, data = its id.

The names follow kazoo's Lock/Election layout (``<uuid>__lock__<sequence>``) so kazoo's own
tools can read them; the first in sequence order leads (docs/design.md, "Leader election").
Sentinels contend (kvstore_sentinel/election.py); the admin and tests ask who leads.
"""

from __future__ import annotations

import re

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from kvstore_cluster import paths

NODE_NAME = "__lock__"
_SEQUENCE = re.compile(r"__lock__(-?\d{10})$")


def in_order(children: list[str]) -> list[str]:
    """The contender nodes among ``children``, first (the leader) first; other names are ignored."""
    numbered = [(m.group(1), c) for c in children if (m := _SEQUENCE.search(c)) is not None]
    return [c for _, c in sorted(numbered)]


def current_leader(client: KazooClient, cluster: str) -> str | None:
    """The id of the sentinel that leads now (the first contender), or None."""
    parent = paths.sentinel_leader(cluster)
    try:
        children = client.get_children(parent)
    except NoNodeError:
        return None
    for name in in_order(children):
        try:
            data, _ = client.get(f"{parent}/{name}")
        except NoNodeError:
            continue  # its session ended between the listing and the read
        return data.decode("utf-8", "replace")
    return None
