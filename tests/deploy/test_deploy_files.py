"""What the playbooks make for real hosts, checked without deploying: the example inventory's plan, a systemd unit."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_helpers import ANSIBLE_DIR, plan_filters, tool

pytestmark = pytest.mark.skipif(tool("ansible") is None, reason="ansible is not installed: pip install -e '.[deploy]'")


def ansible_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-home" / "tmp"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_the_example_inventory_makes_three_groups_with_two_replicas_on_other_hosts(tmp_path: Path) -> None:
    out = subprocess.run([tool("ansible-inventory"), "-i", str(ANSIBLE_DIR / "inventory" / "example.yml"), "--list"],
                         capture_output=True, text=True, env=ansible_env(tmp_path), timeout=60)
    assert out.returncode == 0, out.stderr
    inv = json.loads(out.stdout)
    hostvars = inv["_meta"]["hostvars"]
    filters = plan_filters()
    wanted = filters.redis_groups(inv["redis"]["hosts"], hostvars)
    assert wanted["errors"] == []
    assert set(wanted["groups"]) == {"g1", "g2", "g3"}
    for group in wanted["groups"].values():
        hosts = [node.rsplit(":", 1)[0] for node in [group["master"], *group["replicas"]]]
        assert len(group["replicas"]) == 2 and len(set(hosts)) == 3  # master and replicas on three hosts
    plan = filters.group_plan(wanted, [])
    assert [a["argv"][:4] for a in plan["actions"]] == [["group", "add", "--id", g] for g in ("g1", "g2", "g3")]
    assert sorted(hostvars[h]["zookeeper_myid"] for h in inv["zookeeper"]["hosts"]) == [1, 2, 3]
    assert set(inv["kvstore_sentinel"]["hosts"]) == set(inv["zookeeper"]["hosts"])


def test_the_systemd_unit_runs_the_argv_unchanged_as_the_kvstore_user(tmp_path: Path) -> None:
    argv = ["/opt/kvstore/venv/bin/kvstore-proxy", "--listen", "10.0.0.31:6379", "--name", 'a b\'c "d" \\e',
            "$HOME", "50%h", ""]
    variables = {"kvstore_service_name": "kvstore-proxy", "kvstore_service_description": "kvstore proxy",
                 "kvstore_service_argv": argv, "kvstore_service_env": {"A": "1"},
                 "kvstore_service_env_file": "/opt/kvstore/etc/kvstore.env", "kvstore_service_user": "kvstore",
                 "kvstore_service_workdir": "/opt/kvstore", "kvstore_service_stop_timeout": 15,
                 "kvstore_service_nofile": 65536}
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    unit = tmp_path / "kvstore-proxy.service"
    src = ANSIBLE_DIR / "roles" / "kvstore_service" / "templates" / "service.unit.j2"
    argv_ansible = [tool("ansible"), "localhost", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}",
                    "-m", "ansible.builtin.template", "-a", f"src={src} dest={unit}",
                    "-e", f"@{tmp_path / 'vars.json'}"]
    out = subprocess.run(argv_ansible, capture_output=True, text=True, env=ansible_env(tmp_path), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    text = unit.read_text()
    lines = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    # systemd splits ExecStart into words like a shell for double quotes with \" and \\ escapes;
    # then "$$" is a literal "$" and "%%" a literal "%" (no variable or specifier expansion).
    words = [w.replace("$$", "$").replace("%%", "%") for w in shlex.split(lines["ExecStart"])]
    assert words == argv, text
    assert lines["User"] == "kvstore"
    assert lines["EnvironmentFile"] == "/opt/kvstore/etc/kvstore.env"
    assert lines["Restart"] == "always" and lines["KillMode"] == "control-group"
    assert lines["WantedBy"] == "multi-user.target"
