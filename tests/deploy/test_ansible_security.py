"""The roles with every security setting on, for real: ZooKeeper credentials and a reader, Redis nodes speaking
TLS only, the proxy's TLS port with client certificates, and users; a second run changes nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from deploy_helpers import (
    Deployment,
    assert_playbook_ran,
    free_ports,
    kill_processes,
    make_deployment,
    our_processes,
    playbook,
    tool,
)
from kazoo.exceptions import NoAuthError

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.certs import Certs  # noqa: E402
from kvstore_cluster import paths  # noqa: E402
from kvstore_cluster.store import connect  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    # About three minutes on 2 cores: make deploy-test runs it, plain make test (CI) does not.
    pytest.mark.skipif(os.environ.get("KVSTORE_DEPLOY_SECURITY") != "1",
                       reason="the secured deployment runs with make deploy-test (KVSTORE_DEPLOY_SECURITY=1)"),
    pytest.mark.timeout(900),
    pytest.mark.skipif(tool("ansible-playbook") is None, reason="ansible-playbook is not installed"),
    pytest.mark.skipif(shutil.which("redis-server") is None or not Path("/usr/share/java/zookeeper.jar").exists(),
                       reason="needs redis-server and Debian's zookeeper"),
]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, dict, Path]]:
    base = tmp_path_factory.mktemp("deploy-secure")
    d = make_deployment(base, cluster="securetest")
    certs = Certs(base / "certs")
    ca = certs.ca("ca")
    node, client, proxy = (certs.issue(n, ca) for n in ("node", "client", "proxy"))
    tls_port = free_ports(1)[0]
    settings = {
        "kvstore_zk_auth": "kvstore:deploy-writer-pw", "kvstore_zk_reader_auth": "viewer:deploy-reader-pw",
        "kvstore_redis_tls": True, "redis_tls_cert": node[0], "redis_tls_key": node[1], "redis_tls_ca": ca[0],
        "kvstore_redis_tls_ca": ca[0], "kvstore_redis_tls_cert": client[0], "kvstore_redis_tls_key": client[1],
        "kvstore_proxy_tls_port": tls_port, "kvstore_proxy_tls_cert": proxy[0], "kvstore_proxy_tls_key": proxy[1],
        "kvstore_proxy_tls_ca": ca[0],
        "kvstore_users": [{"name": "app1", "password": "app1-pw", "rules": ["~app1:*", "+@all", "-@dangerous"],
                           "max_connections": 10}],
    }
    extra = base / "security.json"
    extra.write_text(json.dumps(settings))
    files = {"ca": ca, "client": client, "tls_port": tls_port}
    try:
        first = playbook(d, "site.yml", "-e", f"@{extra}")
        assert_playbook_ran(first, "site.yml")
        yield d, files, extra
    finally:
        if our_processes(d.base):
            playbook(d, "teardown.yml", "-e", f"@{extra}")
        leftovers = our_processes(d.base)
        kill_processes(leftovers)
        assert not leftovers, f"processes left after teardown.yml: {leftovers}"


def test_the_roles_set_up_zookeeper_acls_tls_and_users(secured: tuple[Deployment, dict, Path]) -> None:
    d, files, extra = secured
    status = d.admin("status", "--json")
    assert status.returncode == 0, status.stderr
    found = json.loads(status.stdout)
    assert found["zk_access"] == {"writer": "kvstore", "reader": "viewer"}
    assert found["healthy"], found["problems"]
    assert all(g["tls"] for g in json.loads(d.admin("group", "list", "--json").stdout))
    zk = connect(f"127.0.0.1:{d.zk_port}")
    try:
        with pytest.raises(NoAuthError):
            zk.set(paths.slots("securetest"), b"{}")
    finally:
        zk.stop()
        zk.close()
    ca, client = files["ca"], files["client"]
    app1 = redis.Redis(port=files["tls_port"], ssl=True, ssl_ca_certs=ca[0], ssl_certfile=client[0],
                       ssl_keyfile=client[1], ssl_check_hostname=False, username="app1", password="app1-pw",
                       socket_timeout=10, decode_responses=True)
    assert app1.set("app1:x", "1") and app1.get("app1:x") == "1"
    with pytest.raises(redis.exceptions.NoPermissionError):
        app1.set("other:x", "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        app1.flushall()
    node = d.redis["r1m"]["port"]
    plain = subprocess.run(["redis-cli", "-p", str(node), "PING"], capture_output=True, text=True, timeout=10)
    assert "PONG" not in plain.stdout  # the nodes speak TLS only
    second = playbook(d, "site.yml", "-e", f"@{extra}")
    assert_playbook_ran(second, "site.yml (again)")
    assert second.total("changed") == 0, second.changed_tasks()
