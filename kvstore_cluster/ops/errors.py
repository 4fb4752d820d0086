"""Why a cluster operation refused or stopped, in messages fit to show a user as they are."""

from __future__ import annotations


class OpError(Exception):
    """The operation was refused or could not be done; the message says why."""


class SwitchoverError(OpError):
    """The switchover could not be done; nothing is left half-done unless the message says so."""


class RejoinError(OpError):
    """A group cannot rejoin."""


class PlanError(OpError):
    """The requested slot move is impossible (unknown or unowned slots, nobody to move to, ...)."""


class ReshardInProgress(OpError):
    """Another reshard is recorded; it must be resumed or aborted first."""


class ReshardStopped(OpError):
    """The reshard stopped part-way; its state is kept, so it can be resumed (or aborted)."""


class MoveError(ReshardStopped):
    """MIGRATE failed (BUSYKEY, target down, ...)."""
