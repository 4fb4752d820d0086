"""TLS against real redis-server and ZooKeeper: clients to the proxy (redis-py, redis-cli --tls), certificates
made here with openssl (wrong, missing, expired), reload without restart, and every kvstore process to nodes
that speak TLS only."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kvstore_admin.processes import LocalProcess, free_port, tls_config, wait_until
from kvstore_cluster.slots import key_slot

from .security_helpers import Certs, SecuredCluster, client_tls


class Setup:
    def __init__(self, certs: Certs, cluster: SecuredCluster, proxy: LocalProcess, tls_port: int, files: dict):
        self.certs, self.cluster, self.proxy, self.tls_port, self.files = certs, cluster, proxy, tls_port, files


@pytest.fixture(scope="module")
def setup(zookeeper: LocalProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("tls")
    certs = Certs(base / "certs")
    ca = certs.ca("ca")
    node = certs.issue("node", ca)
    client = certs.issue("client", ca)
    proxy_cert = certs.issue("proxy", ca)
    live = base / "live"  # the files the proxy serves, replaced by the reload tests
    live.mkdir()
    shutil.copy(proxy_cert[0], live / "proxy.crt")
    shutil.copy(proxy_cert[1], live / "proxy.key")
    cluster = SecuredCluster(zookeeper, base, groups=2, redis_extra=tls_config(node[0], node[1], ca[0]),
                             tls=(ca[0], *client))
    try:
        tls_port = free_port()
        proxy = cluster.start_proxy(
            "--tls-listen", f"127.0.0.1:{tls_port}", "--tls-cert-file", str(live / "proxy.crt"),
            "--tls-key-file", str(live / "proxy.key"), "--tls-ca-cert-file", ca[0],
            "--redis-tls-ca-cert-file", ca[0], "--redis-tls-cert-file", client[0], "--redis-tls-key-file", client[1])
        files = {"ca": ca, "client": client, "live": live, "node": node}
        yield Setup(certs, cluster, proxy, tls_port, files)
    finally:
        cluster.close()


def tls_client(s: Setup, cert: tuple[str, str] | None = None, ca: str | None = None, **kwargs) -> redis.Redis:  # type: ignore[no-untyped-def]
    cert = cert if cert is not None else s.files["client"]
    return redis.Redis(port=s.tls_port, ssl=True, ssl_ca_certs=ca or s.files["ca"][0], ssl_certfile=cert[0],
                       ssl_keyfile=cert[1], ssl_check_hostname=False, socket_timeout=10, **kwargs)


def test_clients_over_tls_reach_nodes_over_tls(setup: Setup) -> None:
    r = tls_client(setup)
    keys = [f"k{i}" for i in range(40)]
    r.mset({k: k for k in keys})
    assert r.mget(keys) == [k.encode() for k in keys]
    assert r.incr("counter") == 1
    owners = {gid: 0 for gid in setup.cluster.nodes}
    for k in keys:
        owners["g1" if key_slot(k.encode()) < 8192 else "g2"] += 1
    for gid, count in owners.items():
        assert setup.cluster.direct(gid).dbsize() >= count > 0  # on the TLS nodes, both groups
    plain = redis.Redis(port=setup.proxy.port, socket_timeout=10)
    assert plain.get("k1") == b"k1"  # the plain listener beside it
    r3 = tls_client(setup, protocol=3)
    assert r3.get("k2") == b"k2"
    # a leased connection over TLS: a transaction and a blocking command
    pipe = r.pipeline(transaction=True)
    pipe.set("{t}a", 1).incr("{t}a")
    assert pipe.execute() == [True, 2]
    r.rpush("q", "x")
    assert r.blpop(["q"], timeout=2) == (b"q", b"x")


def test_redis_cli_tls(setup: Setup) -> None:
    ca, client = setup.files["ca"], setup.files["client"]
    argv = ["redis-cli", "-p", str(setup.tls_port), "--tls", "--cacert", ca[0], "--cert", client[0], "--key", client[1]]
    assert subprocess.run([*argv, "SET", "cli", "tls"], capture_output=True, text=True, timeout=20).stdout == "OK\n"
    assert subprocess.run([*argv, "GET", "cli"], capture_output=True, text=True, timeout=20).stdout == "tls\n"
    wrong = subprocess.run(["redis-cli", "-p", str(setup.tls_port), "--tls", "--cacert", ca[0], "PING"],
                           capture_output=True, text=True, timeout=20)
    assert "PONG" not in wrong.stdout  # no client certificate: refused


def test_wrong_missing_and_expired_certificates_are_refused(setup: Setup) -> None:
    rogue_ca = setup.certs.ca("rogue")
    rogue = setup.certs.issue("rogue-client", rogue_ca)
    expired = setup.certs.issue("expired-client", setup.files["ca"], days=-1)
    for name, make in (
        ("client trusting another CA", lambda: tls_client(setup, ca=rogue_ca[0])),
        ("certificate of another CA", lambda: tls_client(setup, cert=rogue)),
        ("expired certificate", lambda: tls_client(setup, cert=expired)),
    ):
        with pytest.raises(redis.exceptions.ConnectionError):
            make().ping()
            pytest.fail(name)
    with socket.create_connection(("127.0.0.1", setup.tls_port), timeout=5) as raw:
        ctx = client_tls(setup.files["ca"][0], None)  # no client certificate at all
        try:  # TLS 1.3: the refusal arrives after the client's side of the handshake, as an alert
            with ctx.wrap_socket(raw) as conn:
                conn.sendall(b"PING\r\n")
                got = conn.recv(100)
        except (ssl.SSLError, OSError) as exc:
            got = str(exc).encode()
        assert b"PONG" not in got
    assert tls_client(setup).ping()


def _served_serial(setup: Setup) -> int:
    ctx = client_tls(setup.files["ca"][0], setup.files["client"])
    with socket.create_connection(("127.0.0.1", setup.tls_port), timeout=5) as raw, ctx.wrap_socket(raw) as conn:
        der = conn.getpeercert(binary_form=True)
    return int.from_bytes(der[15:40], "big")  # enough of the DER to tell certificates apart


def _install(setup: Setup, cert: tuple[str, str]) -> None:
    live: Path = setup.files["live"]
    for src, dst in ((cert[1], "proxy.key.new"), (cert[0], "proxy.crt.new")):
        shutil.copy(src, live / dst)
    (live / "proxy.key.new").rename(live / "proxy.key")
    (live / "proxy.crt.new").rename(live / "proxy.crt")


def test_certificate_reload_on_sighup_and_on_change(setup: Setup) -> None:
    connected = tls_client(setup)
    assert connected.set("before", 1)
    first = _served_serial(setup)
    _install(setup, setup.certs.issue("proxy-2", setup.files["ca"]))
    setup.proxy.signal(signal.SIGHUP)
    wait_until(lambda: _served_serial(setup) != first, 10, "the new certificate after SIGHUP")
    second = _served_serial(setup)
    assert connected.get("before") == b"1"  # connected clients keep going
    _install(setup, setup.certs.issue("proxy-3", setup.files["ca"]))  # no signal: the file change is seen
    wait_until(lambda: _served_serial(setup) not in (first, second), 10, "the new certificate on change")
    third = _served_serial(setup)
    (setup.files["live"] / "proxy.key").write_text("garbage")  # half-written: the old one stays
    setup.proxy.signal(signal.SIGHUP)
    wait_until(lambda: "tls_reload_failed" in Path(setup.proxy.log).read_text(), 10, "the failed reload logged")
    assert _served_serial(setup) == third and tls_client(setup).ping()
    assert setup.proxy.alive()


def test_admin_and_reshard_over_tls(setup: Setup) -> None:
    r = tls_client(setup)
    r.mset({f"m{i}": i for i in range(200)})
    ca, client = setup.files["ca"], setup.files["client"]
    env = {"KVSTORE_REDIS_TLS_CA_CERT_FILE": ca[0], "KVSTORE_REDIS_TLS_CERT_FILE": client[0],
           "KVSTORE_REDIS_TLS_KEY_FILE": client[1]}
    status = setup.cluster.admin("status", "--json", env=env)
    assert status.exit_code == 0, status.output
    nodes = [n for g in json.loads(status.stdout)["groups"] for n in g["nodes"]]
    assert len(nodes) == 2 and all(n["up"] and n["ok"] for n in nodes), nodes
    moved = setup.cluster.admin("reshard", "--slots", "0-2000", "--to", "g2", "--json", env=env)
    assert moved.exit_code == 0, moved.output
    assert r.mget([f"m{i}" for i in range(200)]) == [str(i).encode() for i in range(200)]
    assert setup.cluster.admin("check", env=env).exit_code == 0
    no_cert = setup.cluster.admin("status", "--json", env={"KVSTORE_REDIS_TLS_CA_CERT_FILE": ca[0]})
    nodes = [n for g in json.loads(no_cert.stdout)["groups"] for n in g["nodes"]]
    assert all(not n["up"] for n in nodes), nodes  # the nodes want a client certificate


def test_tls_flags_are_checked(setup: Setup) -> None:
    for args, message in (
        (["--tls-listen", "127.0.0.1:1"], "--tls-listen needs --tls-cert-file and --tls-key-file"),
        (["--tls-listen", "127.0.0.1:1", "--tls-cert-file", "/nonexistent", "--tls-key-file", "/nonexistent"],
         "no such file"),
        (["--tls-cert-file", setup.files["node"][0]], "go with --tls-listen"),
        (["--listen", "none"], "--listen none needs --tls-listen"),
        (["--redis-tls-ca-cert-file", "/nonexistent"], "Redis TLS"),
    ):
        done = subprocess.run([sys.executable, "-m", "kvstore_proxy", "--zk", "127.0.0.1:1", *args],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
