"""``import`` answers bad flags, passwords, refusing or garbage sources and an unfit cluster with one clear line."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from import_helpers import admin, admin_process, fill, summary

from kvstore_admin.errors import CORRUPT_DATA, DIFFERENT, NODE_FAILED, PROCESS_FAILED, USAGE, USER_ERROR
from kvstore_admin.processes import free_port, start_redis
from kvstore_cluster import paths
from kvstore_cluster.import_state import ImportRunner
from kvstore_cluster.store import ClusterStore


def fails(cluster, code: int, message: str, *args: str) -> None:  # type: ignore[no-untyped-def]
    result = admin(cluster.zk_hosts, cluster.name, "import", *args)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert lines and message in lines[-1], result.stderr
    if code != USAGE:  # progress lines may come before; the failure is one line, the last
        assert [ln for ln in lines if ln.startswith("Error: ")] == lines[-1:], result.stderr


@pytest.mark.parametrize(("args", "message"), [
    ((), "give the source with --from"),
    (("--from", "nohost"), "expected HOST:PORT"),
    (("--from", "127.0.0.1:99999"), "port 1-65535"),
    (("--from", "127.0.0.1:1", "--db", "-1"), "-1 is not in the range x>=0"),
    (("--from", "127.0.0.1:1", "--db", "zero"), "'zero' is not a valid integer"),
    (("--from", "127.0.0.1:1", "--pause", "0"), "0 is not in the range 1<=x<=3600"),
    (("--from", "127.0.0.1:1", "--verify-keys", "some"), "give a positive number of keys, or 'all'"),
    (("--forget", "--from", "127.0.0.1:1"), "--forget takes no other option"),
])
def test_bad_flags(args: tuple[str, ...], message: str) -> None:
    # Refused before anything is contacted: no ZooKeeper listens at this address.
    result = admin(f"127.0.0.1:{free_port()}", "c1", "import", *args)
    assert result.exit_code == USAGE, result.output
    assert message in result.stderr, result.stderr


def test_unreachable_source(cluster) -> None:  # type: ignore[no-untyped-def]
    address = f"127.0.0.1:{free_port()}"
    fails(cluster, NODE_FAILED, f"cannot connect to the source {address}", "--from", address)


def test_password_source(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = start_redis(tmp_path / "src", password="s3cret", extra={"repl-diskless-sync-delay": "0"})
    try:
        fill(redis.Redis(port=src.port, password="s3cret"), 200)
        fails(cluster, USER_ERROR, f"the source {src.address} needs a password (give it with --password",
              "--from", src.address)
        fails(cluster, USER_ERROR, f"the source {src.address} refused the password (WRONGPASS",
              "--from", src.address, "--password", "wrong")
        proc = admin_process(cluster.zk_hosts, cluster.name, "import", "--from", src.address, "--cutover",
                             "--pause", "2", "--verify", "--json", env={"KVSTORE_SOURCE_PASSWORD": "s3cret"})
        out = summary(proc)
        assert proc.returncode == 0, proc.stderr
        assert out["snapshot"]["keys"] == redis.Redis(port=src.port, password="s3cret").dbsize()
        assert out["verify"]["ok"]
    finally:
        src.stop()


def test_password_given_to_a_source_without_one(cluster, source) -> None:  # type: ignore[no-untyped-def]
    fails(cluster, USER_ERROR, "has no password, but --password was given",
          "--from", source.address, "--password", "x")


def test_source_refusing_psync(cluster, redis_factory) -> None:  # type: ignore[no-untyped-def]
    src = redis_factory.start(extra={"rename-command": "PSYNC \"\""})
    fails(cluster, USER_ERROR, f"the source {src.address} refuses PSYNC (ERR unknown command 'PSYNC'",
          "--from", src.address)


def test_source_user_without_psync_permission(cluster, redis_factory) -> None:  # type: ignore[no-untyped-def]
    src = redis_factory.start()
    redis.Redis(port=src.port).acl_setuser("default", enabled=True, nopass=True, commands=["+@all", "-psync"],
                                            keys=["~*"])
    fails(cluster, USER_ERROR, "refuses PSYNC for this user (NOPERM", "--from", src.address)


def test_cluster_must_be_empty(cluster, source) -> None:  # type: ignore[no-untyped-def]
    fill(redis.Redis(port=source.port), 20)
    redis.Redis(port=cluster.nodes["g2"][0].port).set("already", "here")
    fails(cluster, USER_ERROR, "the cluster already holds keys (g2: 1)", "--from", source.address)


def test_refused_while_a_reshard_is_in_progress(cluster, source, zk) -> None:  # type: ignore[no-untyped-def]
    zk.create(paths.reshard(cluster.name), b"{}")
    fails(cluster, USER_ERROR, "a reshard is in progress", "--from", source.address)


def test_refused_with_unowned_slots(cluster, source, zk) -> None:  # type: ignore[no-untyped-def]
    from kvstore_cluster.model import SlotTable

    store = ClusterStore(zk, cluster.name)
    slots = store.read_slots()
    store.set_slots(SlotTable.from_owners([None] * 100 + list(slots.value.owners()[100:])), slots.version)
    fails(cluster, USER_ERROR, "slots 0-99 have no owner", "--from", source.address)


def test_one_import_at_a_time(cluster, source, zk) -> None:  # type: ignore[no-untyped-def]
    zk.create(paths.import_lock(cluster.name), ImportRunner("otherhost", 4242).encode(), ephemeral=True)
    fails(cluster, USER_ERROR, "another import is running on this cluster (otherhost, pid 4242, since",
          "--from", source.address)
    zk.set(paths.import_lock(cluster.name), b"not json")
    fails(cluster, CORRUPT_DATA, "import-running holds malformed data: import-running: not valid JSON",
          "--from", source.address)


def test_another_source_recorded(cluster, source, redis_factory) -> None:  # type: ignore[no-untyped-def]
    fill(redis.Redis(port=source.port), 20)
    assert admin_process(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--cutover",
                         "--pause", "1").returncode == 0
    other = redis_factory.start()
    fails(cluster, USER_ERROR, f"an import from {source.address} (db 0) is recorded", "--from", other.address)
    forgot = admin(cluster.zk_hosts, cluster.name, "import", "--forget")
    assert forgot.exit_code == 0 and "forgot the import" in forgot.output


def test_verify_alone_reports_differences(cluster, source) -> None:  # type: ignore[no-untyped-def]
    src = redis.Redis(port=source.port)
    fill(src, 300)
    assert admin_process(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--cutover",
                         "--pause", "1").returncode == 0
    assert admin(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--verify").exit_code == 0
    src.set("s:1", "changed")
    src.pexpire("s:2", 500_000)
    src.set("only:on:source", 1)
    src.zadd("z:3", {"extra": 9})
    result = admin(cluster.zk_hosts, cluster.name, "import", "--from", source.address, "--verify",
                   "--verify-keys", "all")
    assert result.exit_code == DIFFERENT, result.output
    assert "4 DIFFERENCES" in result.output
    for text in ("value: 's:1'", "ttl: 's:2'", "missing: 'only:on:source'", "value: 'z:3'", "(cluster "):
        assert text in result.output, result.output


# --- garbage from the source ------------------------------------------------------------------------------


@pytest.fixture
def fake_source() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """``fake(handler)`` -> HOST:PORT of a TCP server running ``handler(conn)`` for each connection."""
    servers: list[socket.socket] = []

    def start(handler: Callable[[socket.socket], None]) -> str:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        servers.append(srv)

        def loop() -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                threading.Thread(target=_serve, args=(handler, conn), daemon=True).start()

        threading.Thread(target=loop, daemon=True).start()
        return f"127.0.0.1:{srv.getsockname()[1]}"

    yield start
    for srv in servers:
        srv.close()


def _serve(handler: Callable[[socket.socket], None], conn: socket.socket) -> None:
    try:
        handler(conn)
    except OSError:
        pass
    finally:
        conn.close()


def _replica_handshake(conn: socket.socket, psync_reply: bytes) -> None:
    """Answer PING, INFO, REPLCONF like a master, then ``psync_reply`` to PSYNC."""
    buf = b""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        buf += data
        while b"\r\n" in buf:
            if b"PSYNC" in buf:
                conn.sendall(psync_reply)
                return
            if b"PING" in buf:
                conn.sendall(b"+PONG\r\n")
            elif b"INFO" in buf:
                info = b"# Server\r\nredis_version:7.0.15\r\n# Replication\r\nrole:master\r\n"
                conn.sendall(b"$%d\r\n%s\r\n" % (len(info), info))
            elif b"REPLCONF" in buf:
                conn.sendall(b"+OK\r\n")
            else:
                break
            buf = b""


def test_source_that_is_not_redis(cluster, fake_source) -> None:  # type: ignore[no-untyped-def]
    address = fake_source(lambda c: (c.recv(100), c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")))
    fails(cluster, NODE_FAILED, f"the source {address} does not speak the Redis protocol", "--from", address)


def test_source_answering_psync_with_garbage(cluster, fake_source) -> None:  # type: ignore[no-untyped-def]
    address = fake_source(lambda c: _replica_handshake(c, b"+WHATEVER 12\r\n"))
    fails(cluster, NODE_FAILED, "answered PSYNC with '+WHATEVER 12', not FULLRESYNC/CONTINUE", "--from", address)


def test_source_sending_a_bad_snapshot(cluster, fake_source) -> None:  # type: ignore[no-untyped-def]
    address = fake_source(lambda c: _replica_handshake(
        c, b"+FULLRESYNC " + b"a" * 40 + b" 100\r\n$20\r\nthis is not an RDB!!"))
    fails(cluster, PROCESS_FAILED, "the snapshot from the source could not be loaded by a local redis-server",
          "--from", address)


def test_source_sending_garbage_in_its_stream(cluster, fake_source, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    empty = start_redis(tmp_path / "rdb")
    redis.Redis(port=empty.port).save()
    empty.stop()
    rdb = (tmp_path / "rdb" / "dump.rdb").read_bytes()
    stream = b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n:42\r\n"
    address = fake_source(lambda c: (_replica_handshake(
        c, b"+FULLRESYNC " + b"b" * 40 + b" 0\r\n$%d\r\n%s" % (len(rdb), rdb) + stream), c.recv(100)))
    fails(cluster, NODE_FAILED, "the source sent 42 in its replication stream at offset 50, not a command",
          "--from", address)
    assert redis.Redis(port=cluster.nodes[_owner(cluster, b"k")][0].port).get("k") == b"v"


def _owner(cluster, key: bytes) -> str:  # type: ignore[no-untyped-def]
    from kvstore_cluster.slots import key_slot

    return cluster.slots.owner(key_slot(key))
