"""kvstore-admin from proxy tests (in-process, or as a real process for the crash hooks), and the cluster's tables."""

from __future__ import annotations

import os
import subprocess
import sys

from click.testing import CliRunner, Result

from kvstore_admin.cli import cli
from kvstore_cluster.store import ClusterStore, connect


def admin(zk_hosts: str, *args: str, cluster: str = "test") -> Result:
    return CliRunner().invoke(cli, ["--zk", zk_hosts, "--cluster", cluster, *args], catch_exceptions=False)


def admin_process(zk_hosts: str, *args: str, cluster: str = "test", env: dict[str, str] | None = None,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", "from kvstore_admin.cli import main; main()",
            "--zk", zk_hosts, "--cluster", cluster, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def slot_owner(zk_hosts: str, slot: int, cluster: str = "test") -> str | None:
    """The group owning ``slot`` now."""
    client = connect(zk_hosts)
    try:
        return ClusterStore(client, cluster).read_slots().value.owner(slot)
    finally:
        client.stop()
        client.close()
