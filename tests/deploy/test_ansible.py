"""site.yml deploys a working cluster for real, a second run changes nothing, teardown.yml leaves no process.

The "hosts" are directories and free ports on this machine (ansible_connection=local): one
ZooKeeper, groups g1 and g2 each as a master host and a replica host, one proxy host and one
sentinel host, all in supervisor mode (kvstore-supervise), since there is no systemd here.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import redis
from deploy_helpers import Deployment, Run, kill_processes, make_deployment, our_processes, playbook, tool

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(tool("ansible-playbook") is None,
                       reason="ansible-playbook is not installed: pip install -e '.[deploy]' (make test does)"),
    pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None
                       or not Path("/usr/share/java/zookeeper.jar").exists(),
                       reason="needs redis-server, redis-cli and Debian's zookeeper "
                              "(apt-get install redis-server zookeeper)"),
]


def assert_ran(run: Run, what: str) -> None:
    assert run.rc == 0, f"{what} failed (rc {run.rc}):\n{run.output[-6000:]}"
    assert run.recap, f"{what}: no PLAY RECAP in the output:\n{run.output[-3000:]}"
    assert run.total("failed") == 0 and run.total("unreachable") == 0, run.recap


def wait_replicated(node: redis.Redis, keys: list[str], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while node.exists(*keys) != len(keys):
        assert time.monotonic() < deadline, "the replica did not receive the keys written through the proxy"
        time.sleep(0.1)


def check_cluster(d: Deployment) -> None:
    """The deployed cluster: healthy, both groups with their replica, every slot owned, proxy and sentinel up."""
    out = d.admin("status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["mode"] == "datastore"
    assert status["slots"]["unowned"] == 0
    groups = {g["id"]: g for g in status["groups"]}
    assert set(groups) == {"g1", "g2"}
    for gid, master, replica in (("g1", "r1m", "r1r"), ("g2", "r2m", "r2r")):
        assert groups[gid]["master"] == d.address(master)
        assert groups[gid]["replicas"] == [d.address(replica)]
        assert groups[gid]["slots"] == 8192
    assert status["proxies"]["count"] == 1
    assert status["sentinels"]["count"] == 1
    assert status["healthy"], status["problems"]


def check_traffic(d: Deployment) -> None:
    """Writes and reads through the deployed proxy land on both groups' masters and reach their replicas."""
    client = redis.Redis(host="127.0.0.1", port=d.proxy_port, protocol=2, decode_responses=True, socket_timeout=10)
    try:
        assert client.ping()
        keys = [f"deploy:{i}" for i in range(200)]
        assert client.set("deploy:hello", "world")
        assert client.get("deploy:hello") == "world"
        assert client.mset({k: f"v{i}" for i, k in enumerate(keys)})
        assert client.mget(keys) == [f"v{i}" for i in range(len(keys))]
        assert client.incr("deploy:counter") == 1
        assert client.dbsize() == len(keys) + 2
    finally:
        client.close()
    for master, replica in (("r1m", "r1r"), ("r2m", "r2r")):
        m = redis.Redis(port=d.redis[master]["port"], protocol=2, decode_responses=True)
        r = redis.Redis(port=d.redis[replica]["port"], protocol=2, decode_responses=True)
        try:
            on_master = [k for k in m.scan_iter("deploy:*", count=1000)]
            assert 0 < len(on_master) < len(keys) + 2, f"{master} holds {len(on_master)} keys: not sharded"
            wait_replicated(r, on_master)
        finally:
            m.close()
            r.close()


@pytest.mark.timeout(900)
def test_site_yml_deploys_a_cluster_that_serves_and_a_second_run_changes_nothing(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    d = make_deployment(tmp_path_factory.mktemp("deploy"))
    timings: dict[str, float] = {}
    teardown: Run | None = None
    leftovers: list[tuple[int, str]] = []
    try:
        first = playbook(d, "site.yml")
        timings["site.yml (1st)"] = first.seconds
        assert_ran(first, "site.yml")
        assert first.total("changed") > 0

        check_cluster(d)
        check_traffic(d)

        second = playbook(d, "site.yml")
        timings["site.yml (2nd)"] = second.seconds
        assert_ran(second, "the second site.yml")
        assert second.total("changed") == 0, "the second run changed:\n" + "\n".join(second.changed_tasks())
        # It did not restart anything either: the data written before is still served.
        client = redis.Redis(port=d.proxy_port, protocol=2, decode_responses=True)
        try:
            assert client.get("deploy:hello") == "world"
        finally:
            client.close()
        print(f"\nchanged: first run {first.total('changed')}, second run {second.total('changed')}")
    finally:
        teardown = playbook(d, "teardown.yml")
        timings["teardown.yml"] = teardown.seconds
        leftovers = our_processes(d.base)
        kill_processes(leftovers)
        print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    assert_ran(teardown, "teardown.yml")
    assert not leftovers, f"processes left after teardown.yml: {leftovers}"
