"""Following ZooKeeper live: master changes and slot moves under load, registration, fencing."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import redis

from kvstore_admin.processes import wait_until
from kvstore_cluster import paths
from kvstore_cluster.model import Group, SlotTable
from kvstore_cluster.slots import key_slot
from kvstore_cluster.store import ClusterStore
from kvstore_proxy.resp import command


class Load:
    """Threads doing SET then GET on their own keys; a GET must return a value it may legitimately see.

    A SET that failed is in doubt (it may or may not have been applied), so either value is fine
    afterwards; any other value is a wrong reply. Threads alternate RESP2 and RESP3 clients, so
    both of each group's connections follow the change.
    """

    def __init__(self, proxy, keys: list[bytes], threads: int = 3):  # type: ignore[no-untyped-def]
        self.proxy = proxy
        self.keys = keys
        self.stop = threading.Event()
        self.wrong: list[str] = []
        self.ok = 0
        self.errors = 0
        self.threads = [threading.Thread(target=self.run, args=(keys[i::threads], 2 + i % 2))
                        for i in range(threads)]

    def run(self, keys: list[bytes], protocol: int) -> None:
        c = self.proxy.client(socket_timeout=10, protocol=protocol)
        allowed: dict[bytes, set[bytes | None]] = {k: {None} for k in keys}
        for k in keys:
            c.delete(k)
        i = 0
        while not self.stop.is_set():
            k = keys[i % len(keys)]
            v = b"%d" % i
            i += 1
            try:
                c.set(k, v)
                allowed[k] = {v}
            except redis.RedisError:
                allowed[k].add(v)
                self.errors += 1
                continue
            try:
                got = c.get(k)
            except redis.RedisError:
                self.errors += 1
                continue
            if got not in allowed[k]:
                self.wrong.append(f"{k!r}: got {got!r}, allowed {allowed[k]!r}")
            else:
                allowed[k] = {got}
                self.ok += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(20)


def registration(zk, cluster: str) -> dict:  # type: ignore[no-untyped-def]
    (name,) = zk.get_children(paths.proxies(cluster))
    return json.loads(zk.get(paths.proxy(cluster, name))[0])


def test_registration_shows_the_applied_versions(proxy_cluster):
    cluster = proxy_cluster(2)
    zk = cluster.zk()
    try:
        info = registration(zk, "test")
        assert info["slots_version"] == 0 and info["groups_version"] == 0
        assert info["address"] == f"127.0.0.1:{cluster.proxy.port}" and info["pid"] == cluster.proxy.proc.pid
        store = ClusterStore(zk, "test")
        v = store.read_slots()
        store.set_slots(v.value.assign([(0, 10)], "g2"), v.version)
        wait_until(lambda: registration(zk, "test")["slots_version"] == 1, 10, "the new slots version")
        # malformed data: logged and ignored, the last good table stays
        zk.set(paths.slots("test"), b"{not json")
        time.sleep(0.5)
        assert registration(zk, "test")["slots_version"] == 1
        assert cluster.proxy.client().set("still", "works")
        assert "table_rejected" in cluster.proxy.output()
    finally:
        zk.stop()


def test_new_master_under_load_changes_routing_without_a_wrong_reply(proxy_cluster):
    cluster = proxy_cluster(2)
    zk = cluster.zk()
    store = ClusterStore(zk, "test")
    old = cluster.nodes["g1"]
    old_c = cluster.direct("g1")
    keys = [b"m:%d" % i for i in range(60)]
    try:
        with Load(cluster.proxy, keys) as load:
            time.sleep(0.5)
            new = cluster.start_redis()
            new_c = redis.Redis(port=new.port)
            new_c.replicaof("127.0.0.1", old.port)
            wait_until(lambda: new_c.info("replication")["master_link_status"] == "up", 15, "replica sync")
            # a switchover: stop writes on the old master, let the replica catch up, promote it
            old_c.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
            wait_until(lambda: new_c.info("replication")["master_repl_offset"]
                       == old_c.info("replication")["master_repl_offset"], 5, "replica to catch up")
            new_c.replicaof("NO", "ONE")
            v = store.read_groups()
            store.set_groups(v.value.put(Group("g1", new.address)), v.version)
            wait_until(lambda: registration(zk, "test")["groups_version"] == v.version + 1, 10, "apply")
            # writes paused on the old master fail at once (in doubt), never acknowledged from there
            old_c.replicaof("127.0.0.1", new.port)
            old_c.execute_command("CLIENT", "UNPAUSE")
            ok_before = load.ok
            wait_until(lambda: load.ok > ok_before + 200, 15, "load to go on")
        assert load.wrong == []
        backends = [v for k, v in cluster.proxy.client().info().items() if k.startswith("backend")]
        assert any(b["group"] == "g1" and b["addr"] == new.address and b["state"] == b["resp3_state"] == "up"
                   for b in backends)
        assert "backend_retired" in cluster.proxy.output()
        # both of the proxy's connections to the old master are closed (at once: the master changed)
        wait_until(lambda: [c for c in old_c.client_list(_type="normal") if c["cmd"] != "client|list"] == [],
                   10, "the old master's proxy connections to close")
    finally:
        zk.stop()


def test_slot_range_moved_under_load_changes_routing_without_a_wrong_reply(proxy_cluster):
    cluster = proxy_cluster(2)
    zk = cluster.zk()
    store = ClusterStore(zk, "test")
    moving = (0, 2000)
    keys = [k for k in (b"s:%d" % i for i in range(400)) if key_slot(k) <= 8191][:120]
    assert any(key_slot(k) <= moving[1] for k in keys)
    g1, g2 = cluster.direct("g1"), cluster.direct("g2")
    try:
        with Load(cluster.proxy, keys) as load:
            time.sleep(0.5)
            # Paused until UNPAUSE below, however long the copy and the proxy's drain (up to its
            # 5 s request timeout) take: a pause that ran out would let g1 acknowledge writes for
            # slots that have moved, which the real reshard's barrier prevents.
            g1.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
            for k in g1.scan_iter(count=1000):
                if moving[0] <= key_slot(k) <= moving[1]:
                    dump = g1.dump(k)
                    if dump is not None:
                        g2.restore(k, 0, dump, replace=True)
            v = store.read_slots()
            table: SlotTable = v.value.assign([moving], "g2")
            store.set_slots(table, v.version)
            wait_until(lambda: registration(zk, "test")["slots_version"] == v.version + 1, 10, "apply")
            # writes for the moved slots still queued on g1 must never run there
            g1.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            g1.execute_command("CLIENT", "UNPAUSE")
            ok_before = load.ok
            wait_until(lambda: load.ok > ok_before + 200, 15, "load to go on")
        assert load.wrong == []
        c = cluster.proxy.client()
        moved = [k for k in keys if key_slot(k) <= moving[1]]
        c.set(moved[0], b"after")
        assert g2.get(moved[0]) == b"after"
    finally:
        zk.stop()


def test_cut_off_from_zookeeper_answers_tryagain_until_reconnected(proxy_cluster, zookeeper):
    cluster = proxy_cluster(2, "--zk-session-timeout", "2")
    c = cluster.proxy.client()
    c.set("f", "1")
    zookeeper.signal(signal.SIGSTOP)
    try:
        def fenced() -> bool:
            try:
                c.get("f")
            except redis.exceptions.TryAgainError as exc:  # redis-py strips the "TRYAGAIN" code
                return "cut off from ZooKeeper" in str(exc)
            return False

        t0 = time.monotonic()
        wait_until(fenced, 10, "the proxy to fence itself")
        assert time.monotonic() - t0 < 4
        assert c.ping()  # the connection stays and non-keyed commands are answered
        time.sleep(1.5)  # longer than the session timeout
    finally:
        zookeeper.signal(signal.SIGCONT)
    wait_until(lambda: c.get("f") == b"1", 20, "the proxy to serve again")
    assert c.info()["fenced"] == 0
    zk = cluster.zk()
    try:
        wait_until(lambda: registration(zk, "test")["fenced"] is False, 10, "re-registration")
    finally:
        zk.stop()


def _lines(s: socket.socket, count: int, timeout: float) -> list[bytes]:
    """``count`` one-line replies from a raw socket (TimeoutError if they take longer)."""
    s.settimeout(timeout)
    out = b""
    while out.count(b"\r\n") < count:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    return out.split(b"\r\n")[:-1]


def test_frozen_master_replaced_fails_its_pending_requests_at_once(proxy_cluster):
    # A master frozen with writes in its socket buffer must never acknowledge them once its
    # group has a new master: it would apply them on waking, answer +OK, then be demoted and
    # lose them. The proxy fails them at once as of unknown outcome (both connections).
    cluster = proxy_cluster(2, "--timeout", "20")
    zk = cluster.zk()
    store = ClusterStore(zk, "test")
    old = cluster.nodes["g1"]
    owners = store.read_slots().value.owners()
    keys = [k for k in (b"fz:%d" % i for i in range(200)) if owners[key_slot(k)] == "g1"][:6]
    new = cluster.start_redis()
    new_c = redis.Redis(port=new.port, socket_timeout=10)
    new_c.replicaof("127.0.0.1", old.port)
    wait_until(lambda: new_c.info("replication")["master_link_status"] == "up", 15, "replica sync")
    socks = []
    try:
        for protocol in (2, 3):
            s = socket.create_connection(("127.0.0.1", cluster.proxy.port), timeout=10)
            if protocol == 3:
                s.sendall(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
                s.settimeout(10)
                hello = s.recv(65536)
                assert hello.startswith(b"%")
            s.sendall(b"*3\r\n$3\r\nSET\r\n$5\r\nfz:up\r\n$1\r\n0\r\n")  # both backends connected
            assert _lines(s, 1, 10) == [b"+OK"]
            socks.append(s)
        old.signal(signal.SIGSTOP)
        try:
            for s in socks:
                s.sendall(b"".join(command([b"SET", k, b"lost"]) for k in keys[:3]))
            time.sleep(0.5)  # the SETs are in the frozen master's socket buffer
            new_c.replicaof("NO", "ONE")
            v = store.read_groups()
            t0 = time.monotonic()
            store.set_groups(v.value.put(Group("g1", new.address)), v.version)
            for s in socks:
                got = _lines(s, 3, 5)
                assert len(got) == 3 and all(
                    line == b"-ERR backend g1 %s master changed while the request was in flight; "
                            b"outcome unknown" % old.address.encode() for line in got), got
            assert time.monotonic() - t0 < 5  # well before the per-request timeout (20 s)
        finally:
            old.signal(signal.SIGCONT)
        # the old master wakes: nothing more reaches the clients, never a +OK for those SETs
        time.sleep(1.0)
        for s in socks:
            s.settimeout(0.5)
            try:
                late = s.recv(65536)
            except TimeoutError:
                late = b""
            assert late == b""
        # later SETs go to the new master
        c = cluster.proxy.client()
        for k in keys[3:]:
            assert c.set(k, b"new")
            assert new_c.get(k) == b"new"
        for s in socks:
            s.sendall(command([b"SET", keys[0], b"again"]))
            assert _lines(s, 1, 10) == [b"+OK"]
        assert new_c.get(keys[0]) == b"again"
    finally:
        for s in socks:
            s.close()
        zk.stop()
