"""Reshard test helpers: run kvstore-admin in-process or as a subprocess, load keys, read the cluster."""

from __future__ import annotations

import os
import subprocess
import sys

import redis
from click.testing import CliRunner, Result

from kvstore_admin.cli import cli
from kvstore_cluster.slots import key_slot
from kvstore_cluster.store import ClusterStore


def admin(zk_hosts: str, *args: str, cluster: str = "test") -> Result:
    return CliRunner().invoke(cli, ["--zk", zk_hosts, "--cluster", cluster, *args], catch_exceptions=False)


def admin_process(zk_hosts: str, *args: str, cluster: str = "test", env: dict[str, str] | None = None,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """kvstore-admin as a real process (for the crash hook, which exits the process)."""
    argv = [sys.executable, "-c", "from kvstore_admin.cli import main; main()",
            "--zk", zk_hosts, "--cluster", cluster, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def load_keys(client: redis.Redis, keys: list[bytes], value: bytes = b"v" * 100, ttl: int | None = None) -> None:
    pipe = client.pipeline(transaction=False)
    for i, k in enumerate(keys):
        pipe.set(k, value, ex=ttl)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def g3_just_added(c: Cluster, n: int) -> list[bytes]:
    """A 3-group cluster as after ``group add`` of g3: every slot on g1 or g2, ``n`` keys of 100 bytes on them."""
    slots = c.store.read_slots()
    owners = ["g1" if s < 8192 else "g2" for s in range(16384)]
    c.store.set_slots(type(slots.value).from_owners(owners), slots.version)
    keys = [f"bulk:{i}".encode() for i in range(n)]
    for gid in ("g1", "g2"):
        load_keys(c.master(gid), [k for k in keys if owners[key_slot(k)] == gid])
    return keys


def keys_in_slots(lo: int, hi: int, n: int, prefix: str = "k") -> list[bytes]:
    """``n`` distinct keys whose slots are in ``lo..hi``."""
    out: list[bytes] = []
    i = 0
    while len(out) < n:
        k = f"{prefix}:{i}".encode()
        if lo <= key_slot(k) <= hi:
            out.append(k)
        i += 1
    return out


class Cluster:
    """A TestCluster plus the calls these tests make on it."""

    def __init__(self, tc, zk) -> None:  # type: ignore[no-untyped-def]
        self.tc = tc
        self.zk_hosts = tc.zk_hosts
        self.store = ClusterStore(zk, tc.name)

    def master(self, gid: str) -> redis.Redis:
        return redis.Redis(port=self.tc.nodes[gid][0].port, socket_timeout=20)

    def owners(self) -> tuple[str | None, ...]:
        return self.store.read_slots().value.owners()

    def counts(self) -> dict[str, int]:
        return self.store.read_slots().value.counts()

    def admin(self, *args: str) -> Result:
        return admin(self.zk_hosts, *args, cluster=self.tc.name)

    def admin_process(self, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        return admin_process(self.zk_hosts, *args, cluster=self.tc.name, **kwargs)

    def check_ok(self) -> None:
        result = self.admin("check", "--json")
        assert result.exit_code == 0, result.output

    def all_keys(self) -> dict[str, set[bytes]]:
        return {gid: set(self.master(gid).scan_iter(count=1000)) for gid in self.tc.nodes}
