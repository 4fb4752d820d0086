"""The playbooks of ansible/ for real: site.yml deploys a cluster that serves, a second run changes nothing,
the rolling operations work on it, and teardown.yml leaves no process behind.

The "hosts" are directories and free ports on this machine (ansible_connection=local): one
ZooKeeper, groups g1 and g2 each as a master host and a replica host, one proxy host and one
sentinel host, in supervisor mode (kvstore-supervise), since there is no systemd here. The
tests share one deployment and run in file order; the module's finalizer tears it down whatever
happened.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from deploy_helpers import (
    Deployment,
    Run,
    assert_playbook_ran,
    kill_processes,
    make_deployment,
    our_processes,
    playbook,
    tool,
)

pytestmark = [
    pytest.mark.slow,
    # Per test, and the first one also runs the module fixture's site.yml (over a minute on 2 cores).
    pytest.mark.timeout(600),
    pytest.mark.skipif(tool("ansible-playbook") is None,
                       reason="ansible-playbook is not installed: pip install -e '.[deploy]' (make test does)"),
    pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None
                       or not Path("/usr/share/java/zookeeper.jar").exists(),
                       reason="needs redis-server, redis-cli and Debian's zookeeper "
                              "(apt-get install redis-server zookeeper)"),
]

KEYS = [f"deploy:{i}" for i in range(200)]
TIMINGS: dict[str, float] = {}


assert_ran = assert_playbook_ran


def run(d: Deployment, name: str, *extra: str) -> Run:
    result = playbook(d, name, *extra)
    label = name if name not in TIMINGS else f"{name} (again)"
    TIMINGS[label] = result.seconds
    print(f"\n{label}: {result.seconds:.1f}s, changed {result.total('changed')}")
    return result


def client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, protocol=2, decode_responses=True, socket_timeout=10)


def write(port: int, command: str, *args: object) -> object:
    """A write through the proxy, retried on -NOREPLICAS: with min-replicas-max-lag 1 a master on a
    busy machine refuses writes until its replica's next ACK (a definite failure, safe to retry)."""
    c = client(port)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                return c.execute_command(command, *args)
            except redis.ResponseError as exc:
                if not str(exc).startswith("NOREPLICAS") or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        c.close()


def mset_keys(port: int) -> None:
    assert write(port, "MSET", *[x for i, k in enumerate(KEYS) for x in (k, f"v{i}")])


def status(d: Deployment) -> dict:
    out = d.admin("status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def groups(d: Deployment) -> dict[str, dict]:
    out = d.admin("group", "list", "--json")
    assert out.returncode == 0, out.stderr
    return {g["id"]: g for g in json.loads(out.stdout)}


def proxies(d: Deployment) -> list[dict]:
    out = d.admin("proxies", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def replica_caught_up(d: Deployment, master: str, replica: str) -> bool:
    m, r = client(d.redis[master]["port"]), client(d.redis[replica]["port"])
    try:
        info = r.info("replication")
        return (info["role"] == "slave" and info["master_link_status"] == "up"
                and info["master_port"] == d.redis[master]["port"] and r.dbsize() == m.dbsize())
    finally:
        m.close()
        r.close()


def all_keys_served(d: Deployment) -> None:
    c = client(d.proxy_port)
    try:
        assert c.mget(KEYS) == [f"v{i}" for i in range(len(KEYS))]
        assert c.get("deploy:hello") == "world"
    finally:
        c.close()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """site.yml run once; whatever happens afterwards, teardown.yml and a check for leftover processes."""
    d = make_deployment(tmp_path_factory.mktemp("deploy"))
    try:
        first = run(d, "site.yml")
        assert_ran(first, "site.yml")
        assert first.total("changed") > 0
        yield d
    finally:
        if our_processes(d.base):
            playbook(d, "teardown.yml")
        leftovers = our_processes(d.base)
        kill_processes(leftovers)
        print("\ntimings: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items()))
        assert not leftovers, f"processes left after teardown.yml: {leftovers}"


def test_site_yml_deploys_a_healthy_cluster(deployed: Deployment) -> None:
    d = deployed
    found = status(d)
    assert found["mode"] == "datastore"
    assert found["slots"]["unowned"] == 0
    by_id = {g["id"]: g for g in found["groups"]}
    assert set(by_id) == {"g1", "g2"}
    for gid, master, replica in (("g1", "r1m", "r1r"), ("g2", "r2m", "r2r")):
        assert by_id[gid]["master"] == d.address(master)
        assert by_id[gid]["replicas"] == [d.address(replica)]
        assert by_id[gid]["slots"] == 8192
    assert found["proxies"]["count"] == 1
    assert found["sentinels"]["count"] == 1
    assert found["healthy"], found["problems"]
    # The roles serve each proxy's and sentinel's Prometheus metrics on their ports.
    for host, family in (("proxy1", b"kvstore_proxy_requests_total"), ("sentinel1", b"kvstore_sentinel_leader")):
        with urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_ports[host]}/metrics", timeout=10) as r:
            assert family in r.read(), host
    # Datastore safety settings on every node (any may become master), as docs/contracts.md asks.
    for host, inst in d.redis.items():
        node = client(inst["port"])
        try:
            got = {**node.config_get("min-replicas-*"), **node.config_get("appendonly")}
        finally:
            node.close()
        assert got == {"min-replicas-to-write": "1", "min-replicas-max-lag": "1", "appendonly": "yes"}, host


def test_writes_and_reads_through_the_proxy_reach_both_groups_and_their_replicas(deployed: Deployment) -> None:
    d = deployed
    assert write(d.proxy_port, "SET", "deploy:hello", "world")
    mset_keys(d.proxy_port)
    assert write(d.proxy_port, "INCR", "deploy:counter") == 1
    c = client(d.proxy_port)
    try:
        assert c.ping()
        assert c.get("deploy:hello") == "world"
        assert c.dbsize() == len(KEYS) + 2
    finally:
        c.close()
    all_keys_served(d)
    for master, replica in (("r1m", "r1r"), ("r2m", "r2r")):
        m = client(d.redis[master]["port"])
        try:
            held = m.dbsize()
        finally:
            m.close()
        assert 0 < held < len(KEYS) + 2, f"{master} holds {held} keys: not sharded"
        wait_until(lambda m=master, r=replica: replica_caught_up(d, m, r), 15, f"{replica} to catch up")


def test_a_second_site_yml_run_changes_nothing(deployed: Deployment) -> None:
    second = run(deployed, "site.yml")
    assert_ran(second, "the second site.yml")
    assert second.total("changed") == 0, "the second run changed:\n" + "\n".join(second.changed_tasks())
    all_keys_served(deployed)  # nothing was restarted and no data lost


def test_upgrade_proxies_installs_the_new_code_and_the_proxy_registers_again(deployed: Deployment) -> None:
    d = deployed
    (before,) = proxies(d)
    # A new "release": the source tree the playbook packs has changed.
    marker = f"# deploy test release {time.time()}\n"
    init = Path(json.loads(d.inventory.read_text())["all"]["vars"]["kvstore_source_dir"]) / "kvstore_proxy/__init__.py"
    init.write_text(init.read_text() + marker)
    upgrade = run(d, "upgrade-proxies.yml")
    assert_ran(upgrade, "upgrade-proxies.yml")
    assert any("Install kvstore into the virtualenv" in line for line in upgrade.changed_tasks())
    installed = list((d.host_dir("proxy1") / "venv" / "lib").glob("python3*/site-packages/kvstore_proxy/__init__.py"))
    assert installed and marker in installed[0].read_text()
    (after,) = proxies(d)
    assert after["address"] == before["address"]
    assert after["pid"] != before["pid"], "the proxy was not restarted"
    all_keys_served(d)


def test_replace_node_puts_a_new_replica_in_the_failed_nodes_group(deployed: Deployment) -> None:
    d = deployed
    failed = d.address("r1r")
    assert d.supervise("r1r", "stop", f"kvstore-redis-{d.redis['r1r']['port']}").stdout.strip() == "stopped"
    d.remove_redis_host("r1r")
    d.add_redis_host("r1n", "g1", "replica")
    # --limit: only the new node's host and the admin host are touched (the other hosts would be "ok").
    replace = run(d, "replace-node.yml", "-e", f"failed_node={failed}", "--limit", "r1n:kvstore_proxy[0]")
    assert_ran(replace, "replace-node.yml")
    g1 = groups(d)["g1"]
    assert g1["master"] == d.address("r1m")
    assert d.address("r1n") in g1["replicas"]
    wait_until(lambda: replica_caught_up(d, "r1m", "r1n"), 15, "the new replica to catch up")
    # The failed node left its group ('group remove-replica'; it did not answer, so it was only told so).
    assert failed not in g1["replicas"]
    assert f"removed replica {failed} from group g1; it could not be reached" in replace.output
    assert all(n["up"] for g in status(d)["groups"] for n in g["nodes"])  # no dead node left listed
    # Running it again for the same failed node changes nothing.
    again = run(d, "replace-node.yml", "-e", f"failed_node={failed}", "--limit", "r1n:kvstore_proxy[0]")
    assert_ran(again, "replace-node.yml (again)")
    assert again.total("changed") == 0, "the second run changed:\n" + "\n".join(again.changed_tasks())
    assert groups(d)["g1"]["replicas"] == g1["replicas"]
    # min-replicas-to-write 1: g1 takes writes again now that it has a live replica.
    mset_keys(d.proxy_port)
    all_keys_served(d)


def test_add_group_adds_g3_and_rebalances_the_slots_with_their_keys(deployed: Deployment) -> None:
    """If the proxies cannot move keys yet, add-group.yml refuses to rebalance under them; the
    rebalance is then checked with the proxy stopped."""
    d = deployed
    d.add_redis_host("r3m", "g3", "master")
    d.add_redis_host("r3r", "g3", "replica")
    added = run(d, "add-group.yml", "--limit", "r3m:r3r:kvstore_proxy[0]")
    by_id = groups(d)
    assert "g3" in by_id and by_id["g3"]["replicas"] == [d.address("r3r")]
    if added.rc != 0 and 'do not declare "migration"' in added.output:
        # Refused before anything was marked: g3 is in, with no slot, and every key is still served.
        assert by_id["g3"]["slots"] == 0
        all_keys_served(d)
        # The deployed proxy cannot serve slots whose keys move yet; with it stopped (nothing to
        # coordinate with) the playbook's rebalance path still runs for real, keys included.
        print("\nadd-group.yml refused to rebalance under a proxy without 'migration'; "
              "rebalancing with the proxy stopped instead")
        proxy = "kvstore-proxy"
        assert d.supervise("proxy1", "stop", proxy).stdout.strip() == "stopped"
        wait_until(lambda: not proxies(d), 30, "the proxy to deregister")
        added = run(d, "add-group.yml", "--limit", "r3m:r3r:kvstore_proxy[0]")
        assert d.supervise("proxy1", "start", proxy).stdout.strip() == "started"
        wait_until(lambda: len(proxies(d)) == 1, 30, "the proxy to register again")
        by_id = groups(d)
    assert_ran(added, "add-group.yml")
    counts = sorted(g["slots"] for g in by_id.values())
    assert sum(counts) == 16384 and counts[-1] - counts[0] <= 1, counts
    all_keys_served(d)
    check = d.admin("check", "--json", timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


def test_teardown_yml_stops_every_process_the_playbooks_started(deployed: Deployment) -> None:
    teardown = run(deployed, "teardown.yml")
    assert_ran(teardown, "teardown.yml")
    assert our_processes(deployed.base) == []
