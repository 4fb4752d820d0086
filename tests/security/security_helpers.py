"""Helpers of the security tests: removing a secured cluster, certificates made with openssl."""

from __future__ import annotations

import ssl
import subprocess
import time
import uuid
from pathlib import Path

import redis
from click.testing import CliRunner, Result

from kvstore_admin.cli import cli as admin_cli
from kvstore_admin.processes import LocalProcess, start_proxy, start_redis
from kvstore_cluster.model import Group, Groups, Meta, SlotTable, even_split
from kvstore_cluster.store import ClusterNotFound, ClusterStore, connect
from kvstore_cluster.zkauth import ZkAccess, ZkCredentials


def remove_secured(zk_hosts: str, cluster: str, writer: ZkCredentials) -> None:
    """Delete ``cluster`` as its writer (an unauthenticated client, like the shared fixture's, may not)."""
    client = connect(zk_hosts, credentials=writer)
    try:
        ClusterStore(client, cluster).destroy()
    except ClusterNotFound:
        pass
    finally:
        client.stop()
        client.close()


WRITER = ZkCredentials("kvstore", "s3cret-writer")
READER = ZkCredentials("viewer", "s3cret-reader")


class SecuredCluster:
    """Real redis-server groups, their tables in a ZooKeeper chroot secured with ACLs, and proxies."""

    def __init__(self, zookeeper: LocalProcess, base: Path, groups: int = 2, redis_extra: dict | None = None,
                 tls: tuple[str, str, str] | None = None):
        self.base = base
        self.name = "sec"
        self.chroot = f"/s-{uuid.uuid4().hex[:12]}"
        self._admin = connect(zookeeper.address)
        self._admin.create(self.chroot)
        self.zk_hosts = f"{zookeeper.address}{self.chroot}"
        self.auth_file = base / "zk-auth"
        self.auth_file.write_text(f"{WRITER.user}:{WRITER.password}\n")
        self.tls = tls  # the nodes speak TLS (redis_extra has tls_config(...)): (CA, client cert, its key)
        context = client_tls(tls[0], (tls[1], tls[2])) if tls else None
        self.nodes = {f"g{i}": start_redis(base / f"redis-g{i}", extra=redis_extra or {}, tls_context=context)
                      for i in range(1, groups + 1)}
        self.procs: list[LocalProcess] = []
        model = Groups(tuple(Group(gid, p.address, tls=tls is not None) for gid, p in self.nodes.items()))
        client = connect(self.zk_hosts, credentials=WRITER)
        try:
            ClusterStore(client, self.name).create(Meta("cache", time.time()), model,
                                                    SlotTable(tuple(even_split(model.ids()))),
                                                    ZkAccess(WRITER.digest_id, READER.digest_id))
        finally:
            client.stop()
            client.close()

    def admin(self, *args: str, env: dict[str, str] | None = None) -> Result:
        result = CliRunner().invoke(admin_cli, ["--zk", self.zk_hosts, "--cluster", self.name,
                                                "--zk-auth-file", str(self.auth_file), *args], env=env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    def password_file(self, password: str) -> str:
        path = self.base / f"pw-{uuid.uuid4().hex[:8]}"
        path.write_text(password + "\n")
        return str(path)

    def start_proxy(self, *extra: str, workers: int = 1, auth: bool = True) -> LocalProcess:
        log = self.base / f"proxy-{len(self.procs)}.log"
        creds = ("--zk-auth-file", str(self.auth_file)) if auth else ()
        proc = start_proxy(self.zk_hosts, self.name, log, "--log-format", "json", *creds, *extra, workers=workers,
                           record=self.procs.append)
        return proc

    def direct(self, gid: str) -> redis.Redis:
        if self.tls is not None:
            return redis.Redis(port=self.nodes[gid].port, socket_timeout=5, ssl=True, ssl_ca_certs=self.tls[0],
                               ssl_certfile=self.tls[1], ssl_keyfile=self.tls[2], ssl_check_hostname=False)
        return redis.Redis(port=self.nodes[gid].port, socket_timeout=5)

    def close(self) -> None:
        for p in [*self.procs, *self.nodes.values()]:
            p.stop(timeout=10)
        try:
            remove_secured(self.zk_hosts, self.name, WRITER)
            self._admin.delete(self.chroot, recursive=True)
        finally:
            self._admin.stop()
            self._admin.close()


class Certs:
    """CAs and certificates made with openssl for a test (EC P-256 keys: quick to make)."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    def ca(self, name: str) -> tuple[str, str]:
        crt, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", str(key), "-out", str(crt), "-days", "30", "-subj", f"/CN={name}")
        return str(crt), str(key)

    def issue(self, name: str, ca: tuple[str, str], days: int = 30) -> tuple[str, str]:
        """A certificate for 127.0.0.1/localhost signed by ``ca``; ``days=-1`` makes an expired one."""
        crt, key, csr = (self.dir / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
        ext = self.dir / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        self._openssl("x509", "-req", "-in", str(csr), "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
                      "-out", str(crt), "-days", str(days), "-extfile", str(ext))
        return str(crt), str(key)


def client_tls(ca: str, cert: tuple[str, str] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx
