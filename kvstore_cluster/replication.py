"""The commands that change a Redis node's replication, as the admin and the sentinel both send them (pure, no I/O).

After ``REPLICAOF`` both send ``CONFIG REWRITE``, so a node restarted from its config file comes
back with the role it was given rather than the one in its file (a promoted replica would
otherwise rejoin its old master, wiping what it took as master). A node started without a
config file has nothing to keep: that one error is expected and ignored; any other is worth a
warning, never a failed change (the role is already in effect).
"""

from __future__ import annotations

from kvstore_cluster.model import parse_address

CONFIG_REWRITE: tuple[str, str] = ("CONFIG", "REWRITE")
_NO_CONFIG_FILE = "running without a config file"


def replicaof_args(master: str | None) -> tuple[str, str, str]:
    """``REPLICAOF host port`` to follow ``master`` (``HOST:PORT``), ``REPLICAOF NO ONE`` for ``None``."""
    if master is None:
        return ("REPLICAOF", "NO", "ONE")
    host, port = parse_address(master)
    return ("REPLICAOF", host, str(port))


def rewrite_error_matters(error: BaseException | str) -> bool:
    """False for the error of a node without a config file (nothing to rewrite), True for any other."""
    return _NO_CONFIG_FILE not in str(error)
