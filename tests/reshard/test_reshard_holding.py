"""The proxy holds requests of marked slots (and of keys being moved in pieces) instead of answering -TRYAGAIN."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from reshard_helpers import keys_in_slots
from test_reshard_proxy_side import reshard_node
from test_reshard_through_proxies import Proxy

from kvstore_admin.processes import wait_until
from kvstore_cluster import keymove, paths
from kvstore_cluster.model import Migration
from kvstore_proxy.migrating import HOLD_SECONDS

MOVES = [Migration(0, 99, "g1", "g2")]


def _mark(c, released: bool) -> None:  # type: ignore[no-untyped-def]
    c.store.client.create(paths.reshard(c.tc.name), reshard_node("moving" if released else "marked", MOVES))
    slots = c.store.read_slots()
    c.store.set_slots(slots.value.with_migrating(tuple(MOVES)), slots.version)


def _in_background(fn) -> tuple[threading.Thread, dict[str, object]]:  # type: ignore[no-untyped-def]
    out: dict[str, object] = {}

    def run() -> None:
        began = time.monotonic()
        try:
            out["reply"] = fn()
        except Exception as exc:  # noqa: BLE001 - checked by the test
            out["error"] = exc
        out["seconds"] = time.monotonic() - began

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_requests_of_a_marked_slot_wait_for_the_release_then_run_in_order(cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    a, b = c.master("g1"), c.master("g2")
    k1, k2 = keys_in_slots(0, 99, 2)
    a.set(k1, b"old", ex=500)
    proxy = Proxy(c.zk_hosts, c.tc.name, tmp_path / "proxy.log")
    try:
        client = proxy.client()
        other = keys_in_slots(200, 16383, 1)[0]
        _mark(c, released=False)
        # The mark is applied: a pipeline on the marked slot waits (no TRYAGAIN), other slots answer.
        wait_until(lambda: proxy_slots_version(c) >= c.store.read_slots().version, 10, "the proxy to apply the mark")
        pipe = client.pipeline(transaction=False)
        pipe.get(k1).set(k1, b"new").append(k1, b"!").set(k2, b"fresh")
        thread, out = _in_background(pipe.execute)
        time.sleep(0.3)
        assert "reply" not in out and "error" not in out, out
        assert client.set(other, b"x") and a.get(k1) == b"old"  # nothing ran on the source meanwhile
        c.store.client.set(paths.reshard(c.tc.name), reshard_node("moving", MOVES))
        thread.join(10)
        assert out.get("reply") == [b"old", True, 4, True], out
        assert 0.3 <= float(out["seconds"]) < HOLD_SECONDS  # type: ignore[arg-type]
        assert not a.exists(k1) and b.get(k1) == b"new!" and b.get(k2) == b"fresh"
    finally:
        proxy.stop()


def test_a_request_held_too_long_gets_tryagain(cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = cluster(groups=2)
    k1 = keys_in_slots(0, 99, 1)[0]
    proxy = Proxy(c.zk_hosts, c.tc.name, tmp_path / "proxy.log")
    try:
        client = proxy.client()
        _mark(c, released=False)
        wait_until(lambda: proxy_slots_version(c) >= c.store.read_slots().version, 10, "the proxy to apply the mark")
        began = time.monotonic()
        with pytest.raises(redis.exceptions.TryAgainError):
            client.get(k1)
        assert HOLD_SECONDS <= time.monotonic() - began < HOLD_SECONDS + 2
    finally:
        proxy.stop()


def test_requests_of_a_key_being_moved_in_pieces_wait_for_it(cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What the key mover does to a big key, step by step: locked, copied, MOVEd, released."""
    c = cluster(groups=2)
    a, b = c.master("g1"), c.master("g2")
    big, small = keys_in_slots(0, 99, 2, "h")
    a.hset(big, mapping={b"f%d" % i: b"v" for i in range(100)})
    a.set(small, b"s")
    proxy = Proxy(c.zk_hosts, c.tc.name, tmp_path / "proxy.log")
    try:
        client = proxy.client()
        _mark(c, released=True)
        wait_until(lambda: proxy_slots_version(c) >= c.store.read_slots().version, 10, "the proxy to apply the mark")
        b_host, b_port = "127.0.0.1", c.tc.nodes["g2"][0].port
        assert a.eval(keymove.LOCK, 1, big, f"{b_host}:{b_port}")[0] == b"hash"
        thread, out = _in_background(lambda: client.pipeline(transaction=False).hset(big, b"late", b"write")
                                     .hlen(big).hget(big, b"late").execute())
        assert client.get(small) == b"s"  # other keys of the slots are served meanwhile
        time.sleep(0.3)
        assert "reply" not in out
        assert a.hlen(big) == 100 and not a.hexists(big, b"late")  # held, not written anywhere
        # The mover's copy: assembled in the copy database, MOVEd into place, then released.
        b.execute_command("SELECT", keymove.COPY_DB)
        b.hset(big, mapping={b"f%d" % i: b"v" for i in range(100)})
        b.execute_command("MOVE", big, 0)
        b.execute_command("SELECT", 0)
        a.eval(keymove.RELEASE, 1, big)
        thread.join(10)
        assert out.get("reply") == [1, 101, b"write"], out  # in the order sent, on the whole key
        assert b.hlen(big) == 101 and not a.exists(big)
    finally:
        proxy.stop()


def proxy_slots_version(c) -> int:  # type: ignore[no-untyped-def]
    regs = c.store.proxies().items
    return min((r.slots_version for r in regs.values()), default=-1)


def test_a_command_sent_after_the_commit_never_overtakes_one_still_taking_its_key(cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import socket

    c = cluster(groups=2)
    a, b = c.master("g1"), c.master("g2")
    k, probe = keys_in_slots(0, 99, 2)
    b.set(probe, b"on the target")
    proxy = Proxy(c.zk_hosts, c.tc.name, tmp_path / "proxy.log")
    try:
        _mark(c, released=True)
        wait_until(lambda: proxy_slots_version(c) >= c.store.read_slots().version, 10, "the proxy to apply the mark")
        conn = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        a.execute_command("CLIENT", "PAUSE", "3000", "ALL")  # the take of the first SET waits on the source
        began = time.monotonic()
        conn.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$5\r\nfirst\r\n" % (len(k), k))
        # Commit: the slots are g2's, no mark, no reshard record.
        slots = c.store.read_slots()
        c.store.set_slots(slots.value.with_migrating(()).assign([(0, 99)], "g2"), slots.version)
        c.store.client.delete(paths.reshard(c.tc.name))
        reader = redis.Redis(port=proxy.port, socket_timeout=0.2)

        def applied() -> bool:
            try:
                return reader.get(probe) == b"on the target"  # no take any more: the new table
            except redis.exceptions.TimeoutError:
                return False
        wait_until(applied, 10, "the proxy to apply the commit")
        assert time.monotonic() - began < 2.7, "the pause ended before the test could check the order"
        conn.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$6\r\nsecond\r\n" % (len(k), k))
        replies = b""
        while replies.count(b"\r\n") < 2:
            replies += conn.recv(100)
        assert replies == b"+OK\r\n+OK\r\n"
        assert b.get(k) == b"second"  # in the order sent
        conn.close()
    finally:
        proxy.stop()


def test_requests_held_when_the_marks_go_away_are_served_by_the_new_table(cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A mark dropped before the release (a cache group failed, say): held requests run where the slot is now."""
    c = cluster(groups=2)
    a = c.master("g1")
    k1 = keys_in_slots(0, 99, 1)[0]
    a.set(k1, b"kept")
    proxy = Proxy(c.zk_hosts, c.tc.name, tmp_path / "proxy.log")
    try:
        client = proxy.client()
        _mark(c, released=False)
        wait_until(lambda: proxy_slots_version(c) >= c.store.read_slots().version, 10, "the proxy to apply the mark")
        thread, out = _in_background(lambda: client.get(k1))
        time.sleep(0.2)
        assert "reply" not in out
        slots = c.store.read_slots()
        c.store.set_slots(slots.value.with_migrating(()), slots.version)  # the mark dropped, g1 still owns them
        thread.join(10)
        assert out.get("reply") == b"kept", out
        assert float(out["seconds"]) < HOLD_SECONDS  # type: ignore[arg-type]
        assert client.set(k1, b"again") and a.get(k1) == b"again"
    finally:
        proxy.stop()
