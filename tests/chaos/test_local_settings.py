"""`local up` applies the loss-bounding Redis settings of docs/contracts.md in datastore mode, and only there."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from kvstore_admin import local
from kvstore_admin.cli import cli


def _config(address: str) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    client = redis.Redis(host=host, port=int(port), protocol=2, decode_responses=True, socket_timeout=5)
    try:
        got = client.config_get("min-replicas-*")
    finally:
        client.close()
    return got["min-replicas-to-write"], got["min-replicas-max-lag"]


@pytest.mark.parametrize("mode, replicas, expected", [
    ("datastore", 1, ("1", "1")),
    ("datastore", 0, ("0", "10")),  # no replica: the setting would refuse every write
    ("cache", 0, ("0", "10")),
])
def test_local_up_sets_min_replicas_in_datastore_mode_with_replicas(
        mode: str, replicas: int, expected: tuple[str, str], zk_hosts: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "_start_services", lambda *a, **k: None)  # Redis settings only: no proxy, sentinel
    state_dir = tmp_path / "local"
    runner = CliRunner()
    up = runner.invoke(cli, ["local", "up", "--dir", str(state_dir), "--zk", zk_hosts, "--mode", mode,
                             "--groups", "1", "--replicas", str(replicas), "--sentinels", "0"])
    try:
        assert up.exit_code == 0, up.output
        state = local.load_state(state_dir)
        assert state is not None
        nodes = [p for p in state.processes if p.name.startswith("redis-")]
        assert len(nodes) == 1 + replicas
        assert {_config(p.address) for p in nodes} == {expected}
    finally:
        runner.invoke(cli, ["local", "down", "--dir", str(state_dir)])
