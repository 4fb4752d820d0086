"""Helpers of the security tests: a secured cluster, removing one, TLS client contexts."""

from __future__ import annotations

import ssl
import sys
import time
import uuid
from pathlib import Path

import redis
from click.testing import CliRunner, Result

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: bench/ is not a package installed

from bench.certs import Certs  # noqa: E402
from kvstore_admin.cli import cli as admin_cli  # noqa: E402
from kvstore_admin.processes import LocalProcess, start_proxy, start_redis  # noqa: E402
from kvstore_cluster.model import Group, Groups, Meta, SlotTable, even_split  # noqa: E402
from kvstore_cluster.store import ClusterNotFound, ClusterStore, connect  # noqa: E402
from kvstore_cluster.zkauth import ZkAccess, ZkCredentials  # noqa: E402

__all__ = ["Certs", "SecuredCluster", "client_tls", "remove_secured"]


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


def client_tls(ca: str, cert: tuple[str, str] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx
