"""Where the test harness reaches a node: a secured cluster registers its nodes' TLS ports, the harness
inspects them through the plain port each node also keeps (``plain``)."""

from __future__ import annotations

# registered (TLS) address -> the same node's plain address
PLAIN: dict[str, str] = {}


def plain(address: str) -> str:
    return PLAIN.get(address, address)
