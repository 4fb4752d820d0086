"""The zookeeper role makes a real ensemble: three members with their own myid elect one leader."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from deploy_helpers import (
    Deployment,
    assert_playbook_ran,
    common_vars,
    free_ports,
    kill_processes,
    our_processes,
    playbook,
    tool,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(tool("ansible-playbook") is None,
                       reason="ansible-playbook is not installed: pip install -e '.[deploy]' (make test does)"),
    pytest.mark.skipif(not Path("/usr/share/java/zookeeper.jar").exists() or shutil.which("java") is None,
                       reason="needs Debian's zookeeper (apt-get install zookeeper)"),
]


def mode(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"srvr")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return next(line.split(": ", 1)[1] for line in data.decode().splitlines() if line.startswith("Mode: "))


def test_three_members_form_an_ensemble_with_one_leader(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("ensemble")
    ports = free_ports(9)
    hosts = {
        f"zk{i}": {"ansible_host": "127.0.0.1", "kvstore_base_dir": str(base / "hosts" / f"zk{i}"),
                   "zookeeper_myid": i, "zookeeper_client_port": ports[3 * (i - 1)],
                   "zookeeper_peer_port": ports[3 * (i - 1) + 1], "zookeeper_election_port": ports[3 * (i - 1) + 2]}
        for i in (1, 2, 3)
    }
    inventory = base / "inventory.json"
    inventory.write_text(json.dumps({"all": {"vars": {**common_vars(base), "zookeeper_heap": "128m"},
                                             "children": {"zookeeper": {"hosts": hosts}}}}))
    d = Deployment(base=base, inventory=inventory, proxy_port=0, zk_port=ports[0])
    try:
        first = playbook(d, "site.yml", "--limit", "zookeeper")
        assert_playbook_ran(first, "site.yml on the ensemble")
        modes = sorted(mode(h["zookeeper_client_port"]) for h in hosts.values())
        assert modes == ["follower", "follower", "leader"]
        for name, h in hosts.items():
            zk_dir = base / "hosts" / name / "zookeeper"
            cfg = (zk_dir / "zoo.cfg").read_text()
            assert all(f"server.{i}=127.0.0.1:{hosts[f'zk{i}']['zookeeper_peer_port']}:" in cfg for i in (1, 2, 3))
            assert (zk_dir / "data" / "myid").read_text().strip() == str(h["zookeeper_myid"])
        second = playbook(d, "site.yml", "--limit", "zookeeper")
        assert_playbook_ran(second, "the second site.yml on the ensemble")
        assert second.total("changed") == 0, "\n".join(second.changed_tasks())
    finally:
        teardown = playbook(d, "teardown.yml", "--limit", "zookeeper")
        leftovers = our_processes(base)
        kill_processes(leftovers)
    assert_playbook_ran(teardown, "teardown.yml")
    assert not leftovers, leftovers
