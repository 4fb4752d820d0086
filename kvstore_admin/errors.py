"""The admin's exit codes and the errors that carry them (one user-facing line each)."""

from __future__ import annotations

from kazoo.exceptions import KazooException, NoAuthError
from kazoo.handlers.threading import KazooTimeoutError

from kvstore_cluster.model import ModelError
from kvstore_cluster.node import NodeError
from kvstore_cluster.ops.errors import OpError, ReshardStopped
from kvstore_cluster.ops.rule_change import RuleChangeStopped
from kvstore_cluster.store import (
    ClusterExists,
    ClusterNotFound,
    CorruptData,
    StoreError,
    VersionConflict,
    ZooKeeperUnavailable,
)
from kvstore_cluster.zkauth import HINT, AccessDenied

OK = 0
USER_ERROR = 1  # bad input or a refused operation (unknown group, node already in a group, ...)
USAGE = 2  # click's own code for a bad command line
ZOOKEEPER_UNREACHABLE = 3
CLUSTER_MISSING_OR_EXISTS = 4
CONFLICT = 5  # somebody else changed the cluster between our read and our write
NODE_FAILED = 6  # a Redis node does not answer, or replication did not come up
CORRUPT_DATA = 7  # malformed data in ZooKeeper or in the local state file
LOCAL_STATE = 8  # local cluster already running / nothing recorded
PROCESS_FAILED = 9  # a local process did not start or did not become ready
MISPLACED = 10  # 'check': a key lives in a group that does not own its slot (or on both sides of a migration)
RESHARD_STOPPED = 11  # 'reshard'/'rebalance' stopped part-way, its state kept (--resume / --abort)
IMPORT_STOPPED = 12  # 'import' stopped part-way (link lost, cluster changed, cutover missed the pause); resumable
DIFFERENT = 13  # 'import --verify' found differences, or commands of the source failed on the cluster
ACCESS_DENIED = 14  # ZooKeeper refused these credentials (missing, wrong, or read-only for a change)
RULES_STOPPED = 15  # 'keyrule add/remove' stopped part-way, the change recorded ('keyrule resume')
SETTINGS_DIFFER = 16  # 'check': keys are fine, but a parameter or the function libraries differ between groups

_EXIT_CODES = [
    (OK, "success"),
    (USER_ERROR, "bad input or refused operation (unknown group, node already in a group, ...)"),
    (USAGE, "bad command line"),
    (ZOOKEEPER_UNREACHABLE, "ZooKeeper unreachable (within --zk-timeout) or connection lost"),
    (CLUSTER_MISSING_OR_EXISTS, "cluster does not exist / already exists"),
    (CONFLICT, "lost a race: the cluster changed meanwhile, nothing was written"),
    (NODE_FAILED, "a Redis node does not answer PING (or refuses the password) or replication did not come up"),
    (CORRUPT_DATA, "malformed data in ZooKeeper or in the local state file"),
    (LOCAL_STATE, "local cluster already running, or none recorded"),
    (PROCESS_FAILED, "a local process did not start or did not become ready"),
    (MISPLACED, "check: a key lives in a group that does not own its slot"),
    (RESHARD_STOPPED, "reshard/rebalance stopped part-way; its state is kept (--resume or --abort)"),
    (IMPORT_STOPPED, "import stopped part-way; run it again to resume"),
    (DIFFERENT, "import: verify found differences, or the cluster refused commands the source ran"),
    (ACCESS_DENIED, "ZooKeeper refused access: credentials missing or wrong, or read-only for a change"),
    (RULES_STOPPED, "keyrule: the change stopped part-way; it is recorded ('keyrule resume')"),
    (SETTINGS_DIFFER, "check: a parameter or the function libraries differ between groups"),
]

EXIT_CODES_HELP = "\b\nExit codes:\n" + "".join(f"  {code:<3} {text}\n" for code, text in _EXIT_CODES)


class AdminError(Exception):
    """A failure to show as one ``Error: ...`` line, exiting with ``code``."""

    code = USER_ERROR

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class LocalStateError(AdminError):
    code = LOCAL_STATE


class ProcessFailed(AdminError):
    code = PROCESS_FAILED


# Most specific first.
_CODES: list[tuple[type[Exception], int]] = [
    (NodeError, NODE_FAILED),
    (ReshardStopped, RESHARD_STOPPED),
    (RuleChangeStopped, RULES_STOPPED),
    (AccessDenied, ACCESS_DENIED),
    (OpError, USER_ERROR),
    (ZooKeeperUnavailable, ZOOKEEPER_UNREACHABLE),
    (ClusterNotFound, CLUSTER_MISSING_OR_EXISTS),
    (ClusterExists, CLUSTER_MISSING_OR_EXISTS),
    (VersionConflict, CONFLICT),
    (CorruptData, CORRUPT_DATA),
    (StoreError, USER_ERROR),
    (ModelError, USER_ERROR),
]


def as_admin_error(exc: Exception) -> AdminError | None:
    """Translate a known library error into an ``AdminError``; ``None`` for anything else."""
    if isinstance(exc, AdminError):
        return exc
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return AdminError(str(exc), code)
    if isinstance(exc, NoAuthError):
        return AdminError(f"ZooKeeper refused access to the cluster ({HINT}; read-only credentials "
                          "cannot change it)", ACCESS_DENIED)
    if isinstance(exc, KazooException | KazooTimeoutError):
        # ConnectionLoss, SessionExpired, ... after a successful connect.
        reason = str(exc) or type(exc).__name__
        return AdminError(f"lost the connection to ZooKeeper ({reason})", ZOOKEEPER_UNREACHABLE)
    return None
