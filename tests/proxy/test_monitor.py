"""MONITOR through a two-worker proxy: Redis's exact line format, every worker's commands, redaction,
the rules for a monitor client, and a slow monitor cut off instead of slowing the proxy."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable

import hiredis
import pytest
import redis

from kvstore_admin.processes import wait_until
from kvstore_proxy import monitor

from .conftest import ProxyProcess, _make_cluster
from .inspect_helpers import Raw

HEAD = re.compile(rb"^\d+\.\d{6} \[0 (127\.0\.0\.1:\d+)\] ")


@pytest.fixture(scope="module")
def mc(zookeeper, tmp_path_factory):
    base = tmp_path_factory.mktemp("monitor-cluster")
    cluster, cleanup = _make_cluster(zookeeper, base, 3)
    try:
        cluster.proxy = ProxyProcess(cluster.zk_hosts, cluster.name, base / "proxy.log", workers=2)
        yield cluster
    finally:
        cleanup()


def connect_to_worker(port: int, index: int | None = None, timeout: float = 30.0) -> tuple[Raw, int]:
    """A raw connection (to worker ``index`` if given) and the index of the worker serving it.

    The kernel spreads connections over the workers listening; one still starting gets none yet.
    """
    deadline = time.monotonic() + timeout
    while True:
        raw = Raw(port)
        info = raw.call("INFO", "server").decode()
        got = int(re.search(r"worker_index:(\d+)", info).group(1))  # type: ignore[union-attr]
        if index is None or got == index:
            return raw, got
        raw.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"no connection reached worker {index} in {timeout:g}s")
        time.sleep(0.01)


def start_monitor(port: int, index: int | None = None) -> tuple[Raw, int]:
    raw, got = connect_to_worker(port, index)
    assert raw.call("MONITOR") == b"OK"
    return raw, got


def lines_until(mon: Raw, marker: bytes, limit: int = 10_000) -> list[bytes]:
    """Monitor lines up to and including the first that contains ``marker``."""
    out = []
    for _ in range(limit):
        line = mon.read()
        assert isinstance(line, bytes), line
        out.append(line)
        if marker in line:
            return out
    raise AssertionError(f"{marker!r} never came")


# Sent to the proxy and to a plain redis-server alike; the monitors must show the same lines.
SCRIPT: list[tuple[bytes, ...]] = [
    (b"SET", b'k"1', b"a\r\nb\x00\xff\\ \t\x07\x08"),
    (b"get", b'k"1'),
    (b"MGET", b"a", b"b", b"c"),
    (b"DEL", b"a", b"b"),
    (b"SET", "ünï".encode(), "çödé".encode()),
    (b"ECHO", b"with space"),
    (b"INCR", b"counter"),
    (b"PING",),
    (b"INFO", b"server"),
    (b"AUTH", b"secret"),
    (b"AUTH", b"default", b"secret"),
    (b"HELLO", b"2", b"AUTH", b"default", b"secret", b"SETNAME", b"x"),
    (b"HELLO", b"2", b"SETNAME", b"y"),
    (b"CLIENT", b"SETNAME", b"z"),
    (b"CONFIG", b"GET", b"maxmemory"),  # admin: never shown
    (b"SLOWLOG", b"LEN"),  # admin
    (b"NOSUCH", b"a"),  # unknown: refused before running, not shown
    (b"GET",),  # wrong arity: likewise
    (b"EVAL", b"return 1", b"0"),
    (b"SELECT", b"0"),
    (b"ECHO", b"end-of-script"),
]


def monitored(port: int, script: list[tuple[bytes, ...]]) -> tuple[list[bytes], str]:
    mon = Raw(port)
    client = Raw(port)
    try:
        assert mon.call("MONITOR") == b"OK"
        for args in script:
            client.call(*args)
        lines = lines_until(mon, b"end-of-script")
        addr = client.sock.getsockname()
        return lines, f"{addr[0]}:{addr[1]}"
    finally:
        mon.close()
        client.close()


def test_monitor_lines_are_exactly_redis_lines(mc, model_server):
    ours, our_addr = monitored(mc.proxy.port, SCRIPT)
    theirs, their_addr = monitored(model_server.port, SCRIPT)
    strip = [HEAD.sub(b"", ln) for ln in ours]
    assert strip == [HEAD.sub(b"", ln) for ln in theirs]
    for ln in ours:
        m = HEAD.match(ln)
        assert m and m.group(1).decode() == our_addr
        assert abs(float(ln.split(b" ", 1)[0]) - time.time()) < 30
    assert b'"AUTH" "(redacted)"' in strip and b'"AUTH" "(redacted)" "(redacted)"' in strip
    assert b'"SET" "k\\"1" "a\\r\\nb\\x00\\xff\\\\ \\t\\a\\b"' in strip


def test_credentials_redis_would_leak_are_redacted_too(mc):
    lines, _ = monitored(mc.proxy.port, [(b"AUTH", b"a", b"b", b"c"),
                                         (b"HELLO", b"2", b"AUTH", b"u1", b"p1", b"AUTH", b"u2", b"p2"),
                                         (b"HELLO", b"9", b"AUTH", b"u", b"p"), (b"ECHO", b"end-of-script")])
    shown = b"\n".join(lines)
    for secret in (b'"a"', b'"b"', b'"c"', b"p1", b"p2", b"u1", b"u2", b'"u"', b'"p"'):
        assert secret not in shown


@pytest.mark.parametrize(
    ("args", "text"),
    [([b"x"], b'"x"'), ([b'a"b'], b'"a\\"b"'), ([b"\\"], b'"\\\\"'), ([b"\r\n\t\x07\x08"], b'"\\r\\n\\t\\a\\b"'),
     ([b"\x00\x7f\x80\xff"], b'"\\x00\\x7f\\x80\\xff"'), ([b""], b'""'), ([b"~ !"], b'"~ !"')],
)
def test_arguments_are_quoted_as_sdscatrepr_does(args, text):
    assert monitor.quote(args[0]) == text
    assert monitor.line(1700000000.5, "1.2.3.4:5", [b"ECHO", *args]) == \
        b'+1700000000.500000 [0 1.2.3.4:5] "ECHO" ' + text + b"\r\n"


def test_commands_of_every_worker_appear_including_the_other_ones(mc):
    port = mc.proxy.port
    clients = {i: connect_to_worker(port, i)[0] for i in (0, 1)}  # both workers are up
    mon, mine = start_monitor(port)
    other = 1 - mine
    try:
        for i, c in clients.items():  # sent right after +OK: the sibling must already stream
            assert c.call("SET", f"from-worker-{i}", "v") == b"OK"
        wanted = {b'"SET" "from-worker-%d" "v"' % i for i in (mine, other)}
        for _ in range(2000):  # finding a connection to each worker showed INFO lines too
            line = mon.read()
            wanted = {w for w in wanted if not line.endswith(w)}
            if not wanted:
                break
        assert not wanted
        assert redis.Redis(port=port).info("clients")["monitor_clients"] == 1
    finally:
        mon.close()
        for c in clients.values():
            c.close()
    wait_until(lambda: redis.Redis(port=port).info("clients")["monitor_clients"] == 0, 5, "monitor gone")


def test_a_monitor_may_not_touch_keys_and_reset_ends_monitoring(mc):
    port = mc.proxy.port
    mon, _ = start_monitor(port)
    try:
        refused = mon.call("GET", "k")
        assert isinstance(refused, hiredis.ReplyError)
        assert str(refused) == "ERR Replica can't interact with the keyspace"
        assert mon.call("PING") == b"PONG"
        assert mon.read().endswith(b'] "PING"')  # a monitor sees its own commands, after their reply
        assert mon.call("RESET") == b"RESET"
        wait_until(lambda: redis.Redis(port=port).info("clients")["monitor_clients"] == 0, 5, "no monitor left")
        assert mon.call("SET", "after-reset", "1") == b"OK"
        assert mon.call("GET", "after-reset") == b"1"  # a plain client again, no more lines
    finally:
        mon.close()


def test_redis_cli_monitor_shows_a_command_sent_by_another_client(mc):
    for i in (0, 1):  # both workers are up (one starting after MONITOR is linked only at its first tick)
        connect_to_worker(mc.proxy.port, i)[0].close()
    argv = ["redis-cli", "-p", str(mc.proxy.port), "MONITOR"]
    if shutil.which("stdbuf"):
        argv = ["stdbuf", "-oL", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""

    def read_until(done: Callable[[bytes], bool]) -> None:
        nonlocal seen
        deadline = time.monotonic() + 20
        while not done(seen):
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"redis-cli printed only:\n{seen.decode(errors='replace')}"
            chunk = os.read(fd, 65536)
            assert chunk, f"redis-cli ended; it printed:\n{seen.decode(errors='replace')}"
            seen += chunk

    try:
        read_until(lambda out: out.startswith(b"OK\n"))
        for i in (0, 1):  # one of them is not the worker redis-cli is connected to
            raw, _ = connect_to_worker(mc.proxy.port, i)
            assert raw.call("SET", f"cli-monitor-{i}", "x") == b"OK"
            raw.close()
        read_until(lambda out: all(b'"cli-monitor-%d"' % i in out for i in (0, 1)))
        for i in (0, 1):
            assert re.search(rb'^\d+\.\d{6} \[0 127\.0\.0\.1:\d+\] "SET" "cli-monitor-%d" "x"$' % i, seen, re.M)
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_slow_monitor_is_cut_off_and_the_proxy_keeps_serving(proxy_cluster):
    c = proxy_cluster(1, "--monitor-output-limit", "262144")
    port = c.proxy.port
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"MONITOR\r\n")
    assert sock.recv(5) == b"+OK\r\n"  # then it never reads again
    pc = c.proxy.client()
    value = b"v" * 1000
    t0 = time.monotonic()
    for batch in range(20):
        pipe = pc.pipeline(transaction=False)
        for i in range(1000):
            pipe.set(f"slow:{batch}:{i}", value)
        assert all(pipe.execute())
    assert time.monotonic() - t0 < 30
    wait_until(lambda: pc.info("clients")["monitor_clients"] == 0, 10, "the slow monitor to be cut off")
    assert "monitor_cut_off" in c.proxy.output()
    sock.settimeout(10)
    try:
        while sock.recv(1 << 20):
            pass  # what was in flight, then the end
    except ConnectionResetError:
        pass
    sock.close()
    assert pc.get("slow:19:999") == value


def test_a_sibling_that_dies_disconnects_monitors_and_monitoring_resumes_after_its_restart(proxy_cluster):
    c = proxy_cluster(2, workers=2)
    port = c.proxy.port
    victim_conn, victim = connect_to_worker(port)
    victim_pid = int(re.search(rb"process_id:(\d+)", victim_conn.call("INFO", "server")).group(1))  # type: ignore[union-attr]
    victim_conn.close()
    mon, _ = start_monitor(port, 1 - victim)
    os.kill(victim_pid, signal.SIGKILL)
    mon.sock.settimeout(10)
    with pytest.raises(ConnectionError):  # not a timeout: the proxy closes it
        for _ in range(100):
            mon.read()
    mon.close()

    def restarted() -> bool:
        raw, _ = connect_to_worker(port, victim)
        try:
            return int(re.search(rb"process_id:(\d+)", raw.call("INFO", "server")).group(1)) != victim_pid  # type: ignore[union-attr]
        finally:
            raw.close()

    wait_until(restarted, 30, "the parent to restart the worker")
    mon, _ = start_monitor(port, 1 - victim)
    client, _ = connect_to_worker(port, victim)
    try:
        client.call("SET", "after-restart", "1")
        assert any(b'"after-restart"' in ln for ln in lines_until(mon, b"after-restart"))
    finally:
        mon.close()
        client.close()


def test_two_monitors_attaching_together_each_see_every_command_once(mc):
    port = mc.proxy.port
    others = {i: connect_to_worker(port, i)[0] for i in (0, 1)}
    first, mine = connect_to_worker(port)
    second, _ = connect_to_worker(port, mine)
    try:
        first.send("MONITOR")
        second.send("MONITOR")  # while the first one's links to the sibling are being made
        assert first.read() == b"OK" and second.read() == b"OK"
        for i, c in others.items():
            c.call("SET", f"twice-{i}", "v")
        others[0].call("ECHO", "end-of-twice")
        for mon in (first, second):
            text = b"\n".join(lines_until(mon, b"end-of-twice"))
            for i in (0, 1):
                assert text.count(b'"twice-%d"' % i) == 1
    finally:
        for raw in (first, second, *others.values()):
            raw.close()
