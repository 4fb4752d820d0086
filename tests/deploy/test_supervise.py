"""kvstore-supervise, the stand-in for systemd: starts once, restarts a crashed service, stops its whole group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deploy_helpers import ANSIBLE_DIR

SUPERVISE = ANSIBLE_DIR / "roles" / "kvstore_service" / "files" / "kvstore-supervise"


def supervise(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SUPERVISE), "--dir", str(run_dir), *args],
                          capture_output=True, text=True, timeout=60)


def status(run_dir: Path, name: str) -> dict:
    return json.loads(supervise(run_dir, "status", name).stdout)[0]


def group_alive(pgid: int) -> bool:
    # Not os.killpg(pgid, 0): an orphaned worker may linger as a zombie where PID 1 reaps nothing.
    return bool(group_pids(pgid))


def wait(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def run_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield tmp_path
    for spec in tmp_path.glob("*.json"):
        supervise(tmp_path, "stop", spec.stem)


def write_spec(run_dir: Path, name: str, script: str, **extra: object) -> None:
    spec = {"argv": [sys.executable, "-c", script], "log": str(run_dir / f"{name}.log"), "stop_timeout": 3,
            "env": {"MARK": "from-spec"}, **extra}
    (run_dir / f"{name}.json").write_text(json.dumps(spec))


# A "service" that forks a worker (like kvstore-proxy --workers) and writes its env to a file.
SERVICE = """
import os, sys, time
with open(os.environ['OUT'], 'w') as out:
    out.write(os.environ.get('MARK', '') + ' ' + os.environ.get('FROM_FILE', ''))
if os.fork() == 0:
    time.sleep(1000)
time.sleep(1000)
"""


def test_start_is_idempotent_and_passes_env_and_env_file(run_dir: Path) -> None:
    env_file = run_dir / "svc.env"
    env_file.write_text('# comment\nFROM_FILE="quoted value"\n')
    write_spec(run_dir, "svc", SERVICE, env_file=str(env_file))
    spec = json.loads((run_dir / "svc.json").read_text())
    spec["env"]["OUT"] = str(run_dir / "out")
    (run_dir / "svc.json").write_text(json.dumps(spec))
    assert supervise(run_dir, "start", "svc").stdout.strip() == "started"
    first = status(run_dir, "svc")
    assert first["state"] == "running"
    assert supervise(run_dir, "start", "svc").stdout.strip() == "running"
    assert status(run_dir, "svc")["pid"] == first["pid"]
    wait(lambda: (run_dir / "out").exists() and (run_dir / "out").read_text())
    assert (run_dir / "out").read_text() == "from-spec quoted value"


def test_a_killed_service_is_restarted_and_its_orphaned_workers_are_killed(run_dir: Path) -> None:
    write_spec(run_dir, "svc", SERVICE, env={"OUT": str(run_dir / "out")})
    supervise(run_dir, "start", "svc")
    old = status(run_dir, "svc")["pid"]
    wait(lambda: len(group_pids(old)) == 2)  # the service and its worker
    os.kill(old, signal.SIGKILL)
    wait(lambda: status(run_dir, "svc").get("restarts") == 1 and status(run_dir, "svc")["state"] == "running")
    assert status(run_dir, "svc")["pid"] != old
    wait(lambda: not group_alive(old))  # the old worker did not outlive its leader


def test_stop_ends_the_whole_process_group_and_status_says_so(run_dir: Path) -> None:
    write_spec(run_dir, "svc", SERVICE, env={"OUT": str(run_dir / "out")})
    supervise(run_dir, "start", "svc")
    pid = status(run_dir, "svc")["pid"]
    wait(lambda: len(group_pids(pid)) == 2)
    assert supervise(run_dir, "stop", "svc").stdout.strip() == "stopped"
    assert not group_alive(pid)
    assert status(run_dir, "svc")["state"] == "stopped"
    assert supervise(run_dir, "status", "svc").returncode == 3
    assert supervise(run_dir, "stop", "svc").stdout.strip() == "not running"


def test_a_service_that_exits_at_start_fails_start_with_its_log(run_dir: Path) -> None:
    write_spec(run_dir, "bad", "import sys; print('no config file'); sys.exit(2)")
    out = supervise(run_dir, "start", "bad")
    assert out.returncode != 0
    assert "exited at start" in out.stderr and "no config file" in out.stderr


def group_pids(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                out.append(int(entry))
    return out
