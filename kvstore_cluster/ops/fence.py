"""The fence every side effect of an operation checks: may this process still act?

The sentinel passes its leadership fence (kvstore_sentinel/election.py): cleared the instant its
ZooKeeper session is in doubt, and turned into a check of its election znode in every
transaction, so a deposed leader can neither take a node-side step nor commit one. The admin
acts for a user and passes ``NoFence``: the versions checked in each transaction are its guard.
"""

from __future__ import annotations

from typing import Protocol

from kvstore_cluster.store import Check


class Fenced(Exception):
    """This process may no longer act (it lost the leadership it acted under, or is stopping)."""


class Fence(Protocol):
    def check(self) -> None:
        """Raise ``Fenced`` unless this process may act right now."""

    def zk_checks(self) -> list[Check]:
        """Transaction operations that fail the transaction unless this process may still act."""


class NoFence:
    """The fence of a caller acting for a user (the admin CLI): always open."""

    def check(self) -> None:
        return None

    def zk_checks(self) -> list[Check]:
        return []


NO_FENCE = NoFence()
