"""Faults on a secured cluster: ZooKeeper ACLs on (every process authenticates), the nodes speaking TLS only
to kvstore (replication, MIGRATE and the sentinel's probes too), the proxies serving clients over TLS only.

The same contracts as test_faults.py (docs/contracts.md); a few of its faults, the ones that reconnect,
promote and move keys over TLS.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import faults
from chaos.runner import fault_timeout, run_fault

pytestmark = pytest.mark.timeout(fault_timeout())


def test_secure_master_sigkill_fails_over_over_tls(chaos_cluster, tmp_path: Path) -> None:
    c = chaos_cluster(secure=True)
    run_fault(c, "secure: master SIGKILL + restart (+ stateful)", faults.master_kill_restart, tmp_path, stateful=2)


def test_secure_reshard_under_load_loses_nothing(chaos_cluster, tmp_path: Path) -> None:
    c = chaos_cluster(secure=True)
    run_fault(c, "secure: reshard there and back (+ stateful)", faults.reshard, tmp_path, stateful=2)


def test_secure_proxy_sigkill_and_restart_loses_nothing(chaos_cluster, tmp_path: Path) -> None:
    c = chaos_cluster(secure=True)
    run_fault(c, "secure: proxy SIGKILL + restart", faults.proxy_kill_restart, tmp_path)
