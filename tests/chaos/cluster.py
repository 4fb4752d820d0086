"""A whole cluster for one chaos test: redis groups, proxies, sentinels, fault links; all stopped at the end."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from security.security_helpers import READER, WRITER, Certs, client_tls

from chaos.addresses import PLAIN, plain
from chaos.faultlink import FaultLink
from chaos.processes import spawn_sentinel, start_chaos_proxy, wait_sentinel
from kvstore_admin.processes import LocalProcess, free_port, redis_ping, spawn, start_redis, tls_config, wait_until
from kvstore_cluster.model import Group, Groups, Meta, SlotTable, even_split
from kvstore_cluster.store import ClusterStore, connect
from kvstore_cluster.zkauth import ZkAccess

# What the chaos clusters run with; see docs/contracts.md for why.
DATASTORE_REDIS = {
    "repl-diskless-sync-delay": "0",
    # A master takes writes only while a replica acknowledged within the last second or so:
    # bounds what an isolated (paused, partitioned) master can accept and then lose.
    "min-replicas-to-write": "1",
    "min-replicas-max-lag": "1",
}
CACHE_REDIS = {"repl-diskless-sync-delay": "0"}
# Sentinel: probe 4x a second, a node is down after 2 s (the default), a dead leader is
# replaced after its 3 s ZooKeeper session expires.
SENTINEL_ARGS = ("--interval", "0.25", "--down-after", "2.0", "--zk-session-timeout", "3")
# Proxy: fenced after most of a 4 s ZooKeeper session; default 5 s backend timeout.
PROXY_ARGS = ("--zk-session-timeout", "4")


def redis_client(address: str, timeout: float = 3.0) -> redis.Redis:
    host, _, port = plain(address).rpartition(":")
    return redis.Redis(host=host, port=int(port), socket_timeout=timeout, socket_connect_timeout=timeout,
                       protocol=2, decode_responses=True)


def info_replication(address: str) -> dict[str, Any]:
    c = redis_client(address)
    try:
        return c.info("replication")
    finally:
        c.close()


class ChaosCluster:
    """Everything one chaos test runs against. ``stop()`` stops every process it started, whatever state it is in."""

    def __init__(self, zookeeper: LocalProcess, base: Path, mode: str = "datastore", groups: int = 2,
                 replicas: int = 2, proxies: int = 2, sentinels: int = 2, linked: tuple[str, ...] = (),
                 sentinel_args: tuple[str, ...] = SENTINEL_ARGS, proxy_args: tuple[str, ...] = PROXY_ARGS,
                 auto_rejoin: bool = False, secure: bool = False):
        self.zookeeper = zookeeper
        self.base = base
        self.mode = mode
        self.n_groups = groups
        self.n_replicas = replicas
        self.n_proxies = proxies
        self.n_sentinels = sentinels
        self.linked = linked  # group ids whose master is registered behind a FaultLink
        self.sentinel_args = sentinel_args
        self.proxy_args = proxy_args
        self.auto_rejoin = auto_rejoin
        self.redis_extra = DATASTORE_REDIS if mode == "datastore" else CACHE_REDIS
        self.name = "chaos"
        self.chroot = f"/chaos-{uuid.uuid4().hex[:10]}"
        self.zk_hosts = f"{zookeeper.address}{self.chroot}"
        self.nodes: dict[str, LocalProcess] = {}  # real address -> redis-server (the latest incarnation)
        self.all_redis: list[LocalProcess] = []
        self.links: dict[str, FaultLink] = {}  # registered (relay) address -> link
        self.proxies: list[LocalProcess] = []
        self.proxy_kills = 0  # faults take turns among the proxies
        self.sentinels: dict[str, LocalProcess] = {}
        self.all_services: list[LocalProcess] = []
        self._zk: Any = None
        self.store: ClusterStore | None = None
        # secure: ZooKeeper ACLs (every process authenticates), nodes registered by their TLS port
        # (the harness inspects them on their plain one, chaos/addresses.py), proxies serving TLS only.
        self.secure = secure
        self.client_tls: Any = None  # what workload clients connect to the proxies with
        self._security_args: tuple[str, ...] = ()

    # --- start / stop -------------------------------------------------------------------------

    def _make_certificates(self) -> None:
        certs = Certs(self.base / "certs")
        ca = certs.ca("ca")
        node, client, proxy = (certs.issue(name, ca) for name in ("node", "client", "proxy"))
        self.redis_extra = {**self.redis_extra, **tls_config(node[0], node[1], ca[0])}
        auth = self.base / "zk-auth"
        auth.write_text(f"{WRITER.user}:{WRITER.password}\n")
        self._security_args = ("--zk-auth-file", str(auth), "--redis-tls-ca-cert-file", ca[0],
                               "--redis-tls-cert-file", client[0], "--redis-tls-key-file", client[1])
        self._proxy_tls = ("--tls-cert-file", proxy[0], "--tls-key-file", proxy[1], "--tls-ca-cert-file", ca[0])
        self.client_tls = client_tls(ca[0], client)

    def admin_args(self) -> tuple[str, ...]:
        """What kvstore-admin needs to act on this cluster: its credentials and TLS files, if secure."""
        return self._security_args

    def registered(self, proc: LocalProcess) -> str:
        """The address the cluster knows ``proc`` by: its TLS port in a secure cluster."""
        return next((tls for tls, p in PLAIN.items() if p == proc.address), proc.address)

    def start(self) -> ChaosCluster:
        admin = connect(self.zookeeper.address)
        try:
            admin.create(self.chroot)
        finally:
            admin.stop()
            admin.close()
        if self.secure:
            self._make_certificates()
        group_list = []
        for i in range(1, self.n_groups + 1):
            gid = f"g{i}"
            master = self._start_redis(f"{gid}-m")
            reps = [self._start_redis(f"{gid}-r{j}", replicaof=self.registered(master))
                    for j in range(1, self.n_replicas + 1)]
            registered = [self.registered(master), *(self.registered(r) for r in reps)]
            if gid in self.linked:
                link = FaultLink(master.port)
                self.links[link.address] = link
                registered[0] = link.address
            group_list.append(Group(gid, registered[0], tuple(registered[1:]), tls=self.secure))
        for g in group_list:
            for rep in g.replicas:
                wait_until(lambda r=rep: info_replication(r).get("master_link_status") == "up", 20,
                           f"replica {rep} of {g.id} to sync")
        self._zk = connect(self.zk_hosts, timeout=10.0, credentials=WRITER if self.secure else None)
        self.store = ClusterStore(self._zk, self.name)
        model = Groups(tuple(group_list))
        self.store.create(Meta(mode=self.mode, created_at=time.time()), model,
                          SlotTable(tuple(even_split(model.ids()))),
                          ZkAccess(WRITER.digest_id, READER.digest_id) if self.secure else None)
        for _ in range(self.n_proxies):
            self.start_proxy()
        sents = [self.spawn_sentinel(f"s{i}") for i in range(1, self.n_sentinels + 1)]
        for s in sents:
            wait_sentinel(s)
        self.wait_settled(20)
        return self

    def _start_redis(self, name: str, replicaof: str | None = None) -> LocalProcess:
        extra = dict(self.redis_extra)
        tls_port = free_port() if self.secure else 0
        if tls_port:
            extra["tls-port"] = str(tls_port)  # and the plain port, for the harness only
        proc = start_redis(self.base / f"redis-{name}", name=f"redis-{name}", replicaof=replicaof, extra=extra)
        if tls_port:
            PLAIN[f"127.0.0.1:{tls_port}"] = proc.address
        self.nodes[proc.address] = proc
        self.all_redis.append(proc)
        return proc

    def start_proxy(self, port: int | None = None) -> LocalProcess:
        """Start a proxy (on ``port``: in place of the one that had it) and wait until it answers PING."""
        proc = start_chaos_proxy(self.zk_hosts, self.name, self.base, *self.proxy_args, *self._security_args,
                                 port=port, record=self.all_services.append,
                                 tls=(self._proxy_tls, self.client_tls) if self.secure else None)
        if port is None:
            self.proxies.append(proc)
        else:
            self.proxies = [proc if p.port == port else p for p in self.proxies]
        return proc

    def spawn_sentinel(self, sentinel_id: str) -> LocalProcess:
        args = [*self.sentinel_args, *(["--auto-rejoin"] if self.auto_rejoin else []), *self._security_args]
        proc = spawn_sentinel(self.zk_hosts, self.name, self.base, sentinel_id, *args)
        self.sentinels[sentinel_id] = proc
        self.all_services.append(proc)
        return proc

    def stop(self) -> None:
        """Stop everything (resuming whatever a fault left stopped first); never raises."""
        for proc in [*self.all_services, *self.all_redis]:
            try:
                proc.signal(signal.SIGCONT)
            except OSError:
                pass
        for proc in self.all_services:
            try:
                proc.stop(timeout=5)
            except Exception:  # noqa: BLE001 - keep stopping the rest
                pass
        for link in self.links.values():
            link.close()
        for proc in self.all_redis:
            try:
                proc.stop(timeout=5)
            except Exception:  # noqa: BLE001
                pass
        if self._zk is not None:
            try:
                self._zk.stop()
                self._zk.close()
            except Exception:  # noqa: BLE001
                pass
        for node in self.all_redis:
            for tls_address, address in list(PLAIN.items()):
                if address == node.address:
                    del PLAIN[tls_address]
        try:
            admin = connect(self.zookeeper.address, timeout=5, credentials=WRITER if self.secure else None)
            try:
                admin.delete(self.chroot, recursive=True)
            finally:
                admin.stop()
                admin.close()
        except Exception:  # noqa: BLE001 - a paused or dead ZooKeeper loses only a chroot
            pass

    # --- reading the cluster ------------------------------------------------------------------

    def proxy_ports(self) -> list[int]:
        return [p.port for p in self.proxies]

    def groups(self) -> Groups:
        assert self.store is not None
        return self.store.read_groups().value

    def slots(self) -> SlotTable:
        assert self.store is not None
        return self.store.read_slots().value

    def real(self, address: str) -> str:
        """The redis-server behind a registered address (a fault link's address maps to its target, a
        TLS address to the node's plain one)."""
        link = self.links.get(address)
        return f"127.0.0.1:{link.target[1]}" if link else plain(address)

    def master(self, gid: str) -> str:
        group = self.groups().get(gid)
        assert group is not None
        return group.master

    def node(self, address: str) -> LocalProcess:
        return self.nodes[self.real(address)]

    def group_slots(self, gid: str) -> frozenset[int]:
        return frozenset(s for s, o in enumerate(self.slots().owners()) if o == gid)

    def leader(self) -> str | None:
        assert self.store is not None
        return self.store.sentinel_leader()

    def wait_settled(self, timeout: float = 45.0) -> None:
        """Until every group is ok with a live master, every replica linked to it, every proxy current."""
        last: list[str] = []

        def settled() -> bool:
            problems = self.problems()
            last[:] = problems
            return not problems

        try:
            wait_until(settled, timeout, "the cluster to settle", interval=0.1)
        except TimeoutError:
            raise TimeoutError(f"cluster did not settle within {timeout:g}s: {last}") from None

    def problems(self) -> list[str]:
        """What keeps the cluster from being settled now (empty when it is)."""
        assert self.store is not None
        out = []
        groups_v = self.store.read_groups()
        slots_v = self.store.read_slots()
        for g in groups_v.value:
            if g.state != "ok":
                if self.mode == "cache" and g.state == "down":
                    continue
                out.append(f"{g.id} is {g.state}")
                continue
            try:
                if info_replication(g.master).get("role") != "master":
                    out.append(f"{g.id} master {g.master} is not a master")
            except redis.RedisError as exc:
                out.append(f"{g.id} master {g.master}: {exc}")
                continue
            for rep in g.replicas:
                try:
                    info = info_replication(rep)
                except redis.RedisError as exc:
                    out.append(f"{g.id} replica {rep}: {exc}")
                    continue
                if info.get("master_link_status") != "up":
                    out.append(f"{g.id} replica {rep} link {info.get('master_link_status')}")
        proxies = self.store.proxies()
        if len(proxies.items) < len(self.proxies):
            out.append(f"{len(proxies.items)} of {len(self.proxies)} proxies registered")
        out += [f"proxy {pid}: {error}" for pid, error in proxies.malformed.items()]
        for pid, reg in proxies.items.items():
            if reg.fenced or reg.slots_version != slots_v.version or reg.groups_version != groups_v.version:
                out.append(f"proxy {pid} at slots {reg.slots_version}/{slots_v.version} "
                           f"groups {reg.groups_version}/{groups_v.version} fenced {reg.fenced}")
        for proc in [*self.proxies, *self.sentinels.values()]:
            if not proc.alive():
                out.append(f"{proc.name} is not running")
        return out

    # --- acting on processes --------------------------------------------------------------------

    def restart_redis(self, address: str) -> LocalProcess:
        """Start the redis-server at ``address`` again: same port, dir and config (so, empty: no persistence)."""
        old = self.node(address)
        proc = spawn(old.name, old.argv, old.port, Path(old.log))
        self.nodes[self.real(address)] = proc
        self.all_redis.append(proc)
        wait_until(lambda: redis_ping(proc.port) or not proc.alive(), 15, f"{old.name} to restart")
        return proc

    def restart_proxy(self, port: int) -> LocalProcess:
        return self.start_proxy(port)

    def restart_sentinel(self, sentinel_id: str) -> LocalProcess:
        proc = self.spawn_sentinel(sentinel_id)
        wait_sentinel(proc)
        return proc
