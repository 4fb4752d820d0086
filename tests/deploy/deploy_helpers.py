"""Running the Ansible playbooks of ansible/ against "hosts" that are directories and ports on this machine."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
# What kvstore-pack puts in the archive; the test packs a snapshot of these so that files other
# engineers edit meanwhile cannot make the second run differ from the first.
SOURCE_ITEMS = ["pyproject.toml", "setup.py", "README.md", "kvstore_cluster", "kvstore_proxy", "kvstore_sentinel",
                "kvstore_admin"]
RECAP_LINE = re.compile(r"^(\S+)\s*:\s*((?:\w+=\d+\s*)+)$")


def plan_filters() -> Any:
    """ansible/roles/kvstore/filter_plugins/kvstore_plan.py as a module (it is plain Python)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "kvstore_plan", ANSIBLE_DIR / "roles" / "kvstore" / "filter_plugins" / "kvstore_plan.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tool(name: str) -> str | None:
    """An Ansible executable next to this interpreter (the project venv), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    return shutil.which(name)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open together while picking, so no repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def snapshot_source(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for item in SOURCE_ITEMS:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / item)
    return dest


@dataclass
class Deployment:
    """A generated inventory: every "host" is a base directory under ``base`` plus its own ports."""

    base: Path
    inventory: Path
    proxy_port: int
    zk_port: int
    redis: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> {"port", "group", "role"}
    metrics_ports: dict[str, int] = field(default_factory=dict)  # proxy/sentinel host -> its /metrics port

    def host_dir(self, host: str) -> Path:
        return self.base / "hosts" / host

    def admin(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """kvstore-admin as installed on the proxy host (the wrapper reads that host's kvstore.env)."""
        return subprocess.run([str(self.host_dir("proxy1") / "bin" / "kvstore-admin"), *args],
                              capture_output=True, text=True, timeout=timeout)

    def address(self, host: str) -> str:
        return f"127.0.0.1:{self.redis[host]['port']}"

    def _inventory(self) -> dict[str, Any]:
        return json.loads(self.inventory.read_text())

    def add_redis_host(self, name: str, group: str, role: str) -> None:
        """A new "host" with one instance on a fresh port, written into the inventory."""
        inst = {"port": free_ports(1)[0], "group": group, "role": role}
        inv = self._inventory()
        inv["all"]["children"]["redis"]["hosts"][name] = {
            "ansible_host": "127.0.0.1", "kvstore_base_dir": str(self.host_dir(name)), "redis_instances": [inst]}
        self.inventory.write_text(json.dumps(inv, indent=2))
        self.redis[name] = inst

    def remove_redis_host(self, name: str) -> None:
        inv = self._inventory()
        del inv["all"]["children"]["redis"]["hosts"][name]
        self.inventory.write_text(json.dumps(inv, indent=2))

    def supervise(self, host: str, *args: str) -> subprocess.CompletedProcess[str]:
        """kvstore-supervise as installed on ``host``."""
        run_dir = self.host_dir(host) / "supervise"
        return subprocess.run([sys.executable, str(run_dir / "kvstore-supervise"), "--dir", str(run_dir), *args],
                              capture_output=True, text=True, timeout=60)


def make_deployment(base: Path, cluster: str = "deploytest") -> Deployment:
    """Inventory: 1 ZooKeeper, groups g1 and g2 as master + replica "hosts", 1 proxy, 1 sentinel."""
    ports = free_ports(11)
    zk_client, zk_peer, zk_election, proxy_port = ports[:4]
    proxy_metrics_port, sentinel_metrics_port = ports[9:11]
    redis = {
        "r1m": {"port": ports[4], "group": "g1", "role": "master"},
        "r1r": {"port": ports[5], "group": "g1", "role": "replica"},
        "r2m": {"port": ports[6], "group": "g2", "role": "master"},
        "r2r": {"port": ports[7], "group": "g2", "role": "replica"},
    }
    source = snapshot_source(base / "source")

    def host(name: str, **hostvars: Any) -> dict[str, Any]:
        return {"ansible_host": "127.0.0.1", "kvstore_base_dir": str(base / "hosts" / name), **hostvars}

    inventory = {"all": {
        "vars": {
            **common_vars(base),
            "kvstore_source_dir": str(source),
            "kvstore_cluster_name": cluster,
            "kvstore_mode": "datastore",
            "kvstore_proxy_workers": 1,
            "kvstore_log_level": "warning",
        },
        "children": {
            "zookeeper": {"hosts": {"zk1": host("zk1", zookeeper_myid=1, zookeeper_client_port=zk_client,
                                                zookeeper_peer_port=zk_peer, zookeeper_election_port=zk_election)}},
            "redis": {"hosts": {name: host(name, redis_instances=[inst]) for name, inst in redis.items()}},
            "kvstore_proxy": {"hosts": {"proxy1": host("proxy1", kvstore_proxy_port=proxy_port,
                                                       kvstore_proxy_metrics_port=proxy_metrics_port)}},
            "kvstore_sentinel": {"hosts": {"sentinel1": host("sentinel1",
                                                             kvstore_sentinel_metrics_port=sentinel_metrics_port)}},
        },
    }}
    path = base / "inventory.json"
    path.write_text(json.dumps(inventory, indent=2))
    return Deployment(base=base, inventory=path, proxy_port=proxy_port, zk_port=zk_client, redis=redis,
                      metrics_ports={"proxy1": proxy_metrics_port, "sentinel1": sentinel_metrics_port})


def common_vars(base: Path) -> dict[str, Any]:
    """Inventory variables that make every host a local "host" run by kvstore-supervise."""
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "kvstore_service_manager": "supervisor",
        "kvstore_service_python": sys.executable,
        "kvstore_become": False,
        "kvstore_install_packages": False,
        "kvstore_create_user": False,
        "kvstore_user": _current_user(),
        "kvstore_python": os.path.realpath(sys.executable),
        "kvstore_pack_dir": str(base / "pack"),
        "zookeeper_heap": "256m",
        "zookeeper_log_level": "WARN",
    }


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@dataclass
class Run:
    rc: int
    output: str
    seconds: float
    recap: dict[str, dict[str, int]]

    def total(self, what: str) -> int:
        return sum(counts.get(what, 0) for counts in self.recap.values())

    def changed_tasks(self) -> list[str]:
        """The "changed:" lines with the task each belongs to, for a readable failure."""
        out, task = [], ""
        for line in self.output.splitlines():
            if line.startswith("TASK ["):
                task = line.rstrip("* ")
            elif line.startswith("changed:"):
                out.append(f"{task}: {line}")
        return out


def assert_playbook_ran(run: Run, what: str) -> None:
    assert run.rc == 0, f"{what} failed (rc {run.rc}):\n{run.output[-6000:]}"
    assert run.recap, f"{what}: no PLAY RECAP in the output:\n{run.output[-3000:]}"
    assert run.total("failed") == 0 and run.total("unreachable") == 0, run.recap


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """``host -> {"ok": n, "changed": n, ...}`` from the PLAY RECAP block of ansible-playbook's output."""
    recap: dict[str, dict[str, int]] = {}
    lines = output.splitlines()
    try:
        start = max(i for i, line in enumerate(lines) if line.startswith("PLAY RECAP"))
    except ValueError:
        return recap
    for line in lines[start + 1:]:
        m = RECAP_LINE.match(line.strip())
        if not m:
            if recap:
                break
            continue
        recap[m.group(1)] = {k: int(v) for k, v in (pair.split("=") for pair in m.group(2).split())}
    return recap


def playbook(deployment: Deployment, name: str, *extra: str, timeout: float = 600) -> Run:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_HOME": str(deployment.base / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(deployment.base / "ansible-home" / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(deployment.base / "ansible-home" / "remote-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_STDOUT_CALLBACK": "default",
    }
    argv = [tool("ansible-playbook") or "ansible-playbook", "-i", str(deployment.inventory), name, *extra]
    began = time.monotonic()
    proc = subprocess.run(argv, cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    log = deployment.base / f"{name}.{int(time.time() * 1000)}.log"
    log.write_text(output)
    return Run(proc.returncode, output, time.monotonic() - began, parse_recap(proc.stdout))


def our_processes(base: Path) -> list[tuple[int, str]]:
    """Live processes whose command line mentions ``base`` (every process the playbooks start does)."""
    needle = str(base)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            found.append((int(entry), cmdline.strip()))
    return found


def kill_processes(procs: list[tuple[int, str]]) -> None:
    """Last resort after a failed teardown: SIGKILL exactly these pids (found by our_processes)."""
    for pid, _ in procs:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
