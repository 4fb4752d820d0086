"""INFO, LATENCY, MEMORY STATS/DOCTOR, LASTSAVE and DBSIZE through a two-worker proxy, against a real
redis-server 7.0 (field names and value kinds) and against the groups themselves (the figures)."""

from __future__ import annotations

import math
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest
import redis

from kvstore_admin.processes import wait_until
from kvstore_proxy import info as proxy_info
from kvstore_proxy.datapath import LATENCY_BUCKETS, latency_bucket_of
from kvstore_proxy.latency import PERCENTILES

from .conftest import ProxyCluster, ProxyProcess, _make_cluster
from .inspect_helpers import Raw, fields, headers, info_text, kind, sections

SECTIONS = [s for s in proxy_info.SECTIONS if s != "backends"]
FLAGS = ("--latency-monitor-threshold", "5")  # latency tracking is on by default


@pytest.fixture(scope="module")
def ic(zookeeper, tmp_path_factory):
    """A 3-group cluster behind a proxy with two workers, latency tracking and the latency monitor on."""
    base = tmp_path_factory.mktemp("info-cluster")
    cluster, cleanup = _make_cluster(zookeeper, base, 3)
    try:
        cluster.proxy = ProxyProcess(cluster.zk_hosts, cluster.name, base / "proxy.log", *FLAGS, workers=2)
        yield cluster
    finally:
        cleanup()


def proxy_port(c: ProxyCluster) -> int:
    assert c.proxy is not None
    return c.proxy.port


def one_client_per_worker(c: ProxyCluster, timeout: float = 30.0) -> dict[int, redis.Redis]:
    """A connection to each of the proxy's two workers (the kernel spreads connections over the
    workers listening; one still starting gets none yet)."""
    found: dict[int, redis.Redis] = {}
    deadline = time.monotonic() + timeout
    while len(found) < 2:
        client = redis.Redis(port=proxy_port(c), single_connection_client=True, socket_timeout=20, protocol=2)
        index = client.info("server")["worker_index"]
        if index in found:
            client.close()
            if time.monotonic() > deadline:
                raise AssertionError(f"no connection reached the second worker in {timeout:g}s")
            time.sleep(0.01)
        else:
            found[index] = client
    return found


def same_commands(port: int) -> None:
    """What both servers get before comparing: keys with and without TTL, errors, a few commands."""
    r = redis.Redis(port=port, socket_timeout=20)
    r.set("info:s", "v")
    r.set("info:t", "v", ex=1000)
    r.lpush("info:l", "a", "b")
    r.get("info:s")
    for _ in range(3):
        with pytest.raises(redis.ResponseError):
            r.lpush("info:s", "x")  # WRONGTYPE
    with pytest.raises(redis.ResponseError):
        r.execute_command("NOSUCHCOMMAND")  # ERR
    r.close()


def test_every_section_has_redis_fields_with_the_same_kinds_of_values(ic, model_server):
    for port in (proxy_port(ic), model_server.port):
        same_commands(port)
    wait_until(lambda: "db0" in fields(info_text(proxy_port(ic), "keyspace")), 10, "keyspace to show the keys")
    ours = sections(info_text(proxy_port(ic), "everything"))
    theirs = sections(info_text(model_server.port, "everything"))
    assert set(theirs) <= set(ours)
    for name in SECTIONS:
        assert name in ours, name
        for field, value in theirs[name].items():
            assert field in ours[name], f"INFO {name}: {field} missing"
            assert kind(ours[name][field]) == kind(value), f"INFO {name}: {field}: {ours[name][field]!r} vs {value!r}"
    # the sections Redis left with fields for the commands both got
    assert {"cmdstat_set", "cmdstat_lpush"} <= set(ours["commandstats"])
    assert {"errorstat_WRONGTYPE", "errorstat_ERR"} <= set(ours["errorstats"])
    assert "latency_percentiles_usec_set" in ours["latencystats"] and "db0" in ours["keyspace"]
    assert ours["replication"]["role"] == "master" and ours["cluster"]["cluster_enabled"] == "0"


@pytest.mark.parametrize("args", [(), ("default",), ("all",), ("everything",), ("keyspace", "CLUSTER", "server"),
                                  ("default", "commandstats"), ("nosuch",), ("Memory", "cpu", "memory")])
def test_info_returns_the_sections_redis_returns_in_its_order(ic, model_server, args):
    ours = [h for h in headers(info_text(proxy_port(ic), *args)) if h != "# Backends"]
    assert ours == headers(info_text(model_server.port, *args))


def test_an_unknown_section_is_an_empty_reply_like_redis(ic):
    raw = Raw(proxy_port(ic))
    try:
        assert raw.call("INFO", "nosuch") == b""
        assert raw.call("INFO", b"\xff\x00") == b""
    finally:
        raw.close()


def group_info(c: ProxyCluster, section: str) -> list[dict]:
    return [c.direct(gid).info(section) for gid in c.nodes]


def test_keys_expires_and_dbsize_are_the_sum_over_the_groups(ic):
    ic.flush_all()
    pc = ic.proxy.client()
    for i in range(300):
        pc.set(f"k:{i}", "x", ex=1000 if i % 3 == 0 else None)

    def keyspace() -> dict:
        return pc.info("keyspace").get("db0", {})

    wait_until(lambda: keyspace().get("keys") == 300, 5, "INFO keyspace to count 300 keys")
    db0 = keyspace()
    assert db0["expires"] == 100
    per_group = [g.get("db0", {"keys": 0, "expires": 0, "avg_ttl": 0}) for g in group_info(ic, "keyspace")]
    assert sum(g["keys"] for g in per_group) == 300 and all(g["keys"] > 50 for g in per_group)
    assert sum(g["expires"] for g in per_group) == 100
    weighted = sum(g["avg_ttl"] * g["expires"] for g in per_group) // 100
    assert abs(db0["avg_ttl"] - weighted) < 5000  # both drift as the TTLs run down
    assert 0 < db0["avg_ttl"] <= 1_000_000
    assert pc.dbsize() == 300 == db0["keys"]


def test_memory_is_the_sum_over_the_groups_with_their_limit_and_policy(ic):
    pc = ic.proxy.client()
    directs = [ic.direct(gid) for gid in ic.nodes]
    try:
        for d in directs:
            d.config_set("maxmemory", str(100 * 1024 * 1024))
            d.config_set("maxmemory-policy", "allkeys-lru")
        wait_until(lambda: pc.info("memory")["maxmemory"] == 300 * 1024 * 1024, 5, "maxmemory to add up")
        mem = pc.info("memory")
        assert mem["maxmemory_human"] == "300.00M" and mem["maxmemory_policy"] == "allkeys-lru"
        groups = group_info(ic, "memory")
        assert mem["used_memory_startup"] == sum(g["used_memory_startup"] for g in groups)
        groups_used = sum(g["used_memory"] for g in groups)
        assert abs(mem["used_memory"] - groups_used) < 0.1 * groups_used  # client buffers move in between
        assert mem["used_memory_human"].endswith(("K", "M"))
        directs[1].config_set("maxmemory", "0")
        directs[1].config_set("maxmemory-policy", "noeviction")
        wait_until(lambda: pc.info("memory")["maxmemory"] == 0, 5, "one unlimited group to lift the limit")
        assert pc.info("memory")["maxmemory_policy"] == "mixed"
    finally:
        for d in directs:
            d.config_set("maxmemory", "0")
            d.config_set("maxmemory-policy", "noeviction")


def test_memory_stats_doctor_and_lastsave_answer_for_all_groups(ic):
    ic.flush_all()
    pc = ic.proxy.client()
    pc.mset({f"m:{i}": "v" * 100 for i in range(90)})
    stats = pc.memory_stats()
    assert stats["keys.count"] == 90
    per_group = [ic.direct(gid).memory_stats() for gid in ic.nodes]
    assert stats["db.0"]["overhead.hashtable.main"] == sum(g["db.0"]["overhead.hashtable.main"] for g in per_group)
    assert stats["startup.allocated"] == sum(g["startup.allocated"] for g in per_group)
    # what moves: each group's client buffers (ours included) between the two reads
    assert abs(stats["total.allocated"] - sum(g["total.allocated"] for g in per_group)) < 0.1 * stats["total.allocated"]
    assert 0 < float(stats["dataset.percentage"]) < 100
    stats3 = redis.Redis(port=proxy_port(ic), protocol=3).memory_stats()  # RESP3: a map, doubles
    assert stats3["keys.count"] == 90 and isinstance(stats3["dataset.percentage"], float)
    assert isinstance(stats3["db.0"], dict)
    doctor = pc.execute_command("MEMORY", "DOCTOR")
    text = doctor.decode() if isinstance(doctor, bytes) else str(doctor)
    for gid in ic.nodes:
        assert f"group {gid} " in text
    ic.direct("g2").save()
    lastsaves = [ic.direct(gid).lastsave() for gid in ic.nodes]
    assert pc.lastsave() == min(lastsaves)


def test_info_asks_the_groups_at_most_once_a_second_per_worker(ic):
    def info_calls() -> list[int]:
        return [ic.direct(gid).info("commandstats").get("cmdstat_info", {}).get("calls", 0) for gid in ic.nodes]

    before = info_calls()
    t0 = time.monotonic()
    clients = one_client_per_worker(ic)
    for _ in range(40):
        for c in clients.values():
            c.info()
    elapsed = time.monotonic() - t0
    after = info_calls()
    # our own INFO commandstats call counts once on each group
    per_group = [a - b - 1 for a, b in zip(after, before, strict=True)]
    assert max(per_group) <= 2 * (int(elapsed) + 2), (per_group, elapsed)


def test_clients_commands_and_errors_add_up_over_both_workers(ic, model_server):
    observer = redis.Redis(port=proxy_port(ic), single_connection_client=True)
    base = observer.info("clients")["connected_clients"]
    clients = one_client_per_worker(ic)
    wait_until(lambda: observer.info("clients")["connected_clients"] == base + 2, 5, "both workers' clients")
    stats0 = observer.info("stats")
    pings0 = observer.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)
    errors0 = observer.info("errorstats")
    model = redis.Redis(port=model_server.port)
    model_errors0 = model.info("errorstats")
    for c in clients.values():
        for _ in range(25):
            c.ping()
    for client in [*clients.values(), model]:
        with pytest.raises(redis.ResponseError):
            client.execute_command("NOSUCH")
        client.set("e", "x")
        with pytest.raises(redis.ResponseError):
            client.lpush("e", "y")
    assert observer.info("commandstats")["cmdstat_ping"]["calls"] - pings0 == 50
    stats1 = observer.info("stats")
    assert stats1["total_commands_processed"] > stats0["total_commands_processed"] + 50
    assert stats1["total_error_replies"] - stats0["total_error_replies"] == 4

    def delta(after: dict, before: dict, code: str) -> int:
        return after.get(f"errorstat_{code}", {}).get("count", 0) - before.get(f"errorstat_{code}", {}).get("count", 0)

    errors1 = observer.info("errorstats")
    model_errors1 = model.info("errorstats")
    for code in ("ERR", "WRONGTYPE"):
        assert delta(errors1, errors0, code) == 2 * delta(model_errors1, model_errors0, code) == 2
    for c in clients.values():
        c.close()
    wait_until(lambda: observer.info("clients")["connected_clients"] == base, 5, "clients gone")
    assert observer.info("stats")["total_connections_received"] >= stats0["total_connections_received"]
    assert observer.info("clients")["blocked_clients"] == 0
    assert observer.info("cpu")["used_cpu_user"] > 0


def test_blocked_clients_counts_clients_waiting_in_a_blocking_command(ic):
    observer = redis.Redis(port=proxy_port(ic))
    assert observer.info("clients")["blocked_clients"] == 0
    clients = one_client_per_worker(ic)
    results = []
    waiters = [threading.Thread(target=lambda c=c, i=i: results.append(c.blpop([f"blocked:{i}"], timeout=20)))
               for i, c in clients.items()]
    for t in waiters:
        t.start()
    try:
        wait_until(lambda: observer.info("clients")["blocked_clients"] == 2, 10, "two blocked clients")
    finally:
        for i in clients:
            observer.rpush(f"blocked:{i}", "x")
        for t in waiters:
            t.join()
    assert sorted(results) == [(b"blocked:0", b"x"), (b"blocked:1", b"x")]
    wait_until(lambda: observer.info("clients")["blocked_clients"] == 0, 10, "no blocked client left")


def test_instantaneous_ops_per_sec_counts_both_workers(ic):
    clients = one_client_per_worker(ic)
    stop = threading.Event()

    def load(c: redis.Redis) -> None:
        while not stop.is_set():
            c.ping()

    threads = [threading.Thread(target=load, args=(c,)) for c in clients.values()]
    for t in threads:
        t.start()
    try:
        observer = redis.Redis(port=proxy_port(ic))
        wait_until(lambda: observer.info("stats")["instantaneous_ops_per_sec"] > 100, 10, "ops/s to show the load")
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_latency_events_of_one_worker_show_through_the_other(ic):
    clients = one_client_per_worker(ic)
    clients[0].execute_command("LATENCY", "RESET")
    clients[0].eval("local i = 0 while i < 3000000 do i = i + 1 end return 1", 0)
    latest = clients[1].execute_command("LATENCY", "LATEST")
    slow = [e for e in latest if e[0] == b"command" and e[3] >= 20]
    assert slow, latest
    history = clients[1].execute_command("LATENCY", "HISTORY", "command")
    assert any(ms >= 20 for _, ms in history)
    assert clients[1].execute_command("LATENCY", "HISTORY", "nosuch") == []
    assert clients[1].execute_command("LATENCY", "RESET", "nosuch") == 0
    junk = [b"x" * 200 + b"%d" % i for i in range(100)]  # whatever else a client names, it is reset
    assert clients[1].execute_command("LATENCY", "RESET", *junk, "command") == 1
    assert not [e for e in clients[0].execute_command("LATENCY", "LATEST") if e[3] >= 20]


def test_latency_histogram_and_latencystats_count_both_workers(ic, model_server):
    clients = one_client_per_worker(ic)
    before = clients[0].execute_command("LATENCY", "HISTOGRAM", "echo")
    calls0 = before[1][1] if before else 0
    for c in clients.values():
        for _ in range(10):
            c.echo("x")
    got = clients[0].execute_command("LATENCY", "HISTOGRAM", "echo", "nosuch")
    assert got[0] == b"echo" and got[1][0] == b"calls" and got[1][1] == calls0 + 20
    buckets = got[1][3]
    assert buckets[-1] == calls0 + 20 and buckets[::2] == sorted(buckets[::2])
    model = redis.Redis(port=model_server.port, protocol=2)
    model.echo("x")
    theirs = model.execute_command("LATENCY", "HISTOGRAM", "echo")
    assert [type(x) for x in got[1][:3]] == [type(x) for x in theirs[1][:3]]
    # RESP3: maps all the way down, as Redis answers
    r3 = redis.Redis(port=proxy_port(ic), protocol=3).execute_command("LATENCY", "HISTOGRAM", "echo")
    m3 = redis.Redis(port=model_server.port, protocol=3).execute_command("LATENCY", "HISTOGRAM", "echo")
    assert set(r3) == set(m3) == {b"echo"} and set(r3[b"echo"]) == set(m3[b"echo"])
    assert isinstance(r3[b"echo"][b"histogram_usec"], dict)
    stats = redis.Redis(port=proxy_port(ic)).info("latencystats")["latency_percentiles_usec_echo"]
    assert set(stats) == {"p50", "p99", "p99.9"} and 0 < stats["p50"] <= stats["p99"] <= stats["p99.9"]
    assert clients[0].execute_command("LATENCY", "HISTOGRAM", "nosuch") == []
    # every reply is in the histogram once: as many as INFO commandstats counts, over both workers
    calls = clients[1].info("commandstats")["cmdstat_echo"]["calls"]
    assert clients[1].execute_command("LATENCY", "HISTOGRAM", "echo")[1][1] == calls == calls0 + 20


def test_latencystats_percentiles_fall_in_the_bucket_of_the_latency_served(ic):
    """BRPOP of an empty list with a timeout: Redis answers after the timeout (to the millisecond),
    the client has its reply within the time it measured; the percentiles lie in between."""
    client = redis.Redis(port=proxy_port(ic), socket_timeout=20)
    assert "latency_percentiles_usec_brpop" not in client.info("latencystats")
    timeouts = [0.01] * 15 + [0.1] * 5  # p50: a 10 ms one; p99 and p99.9: 100 ms ones
    windows = []
    for timeout in timeouts:
        start = time.monotonic()
        assert client.brpop(["info:nothing"], timeout=timeout) is None
        windows.append(time.monotonic() - start)
    got = client.info("latencystats")["latency_percentiles_usec_brpop"]
    assert client.execute_command("LATENCY", "HISTOGRAM", "brpop")[b"brpop"][b"calls"] == len(timeouts)  # RESP3
    for p, name in zip(PERCENTILES, ("p50", "p99", "p99.9"), strict=True):
        value = got[name]
        rank = math.ceil(p * len(timeouts) / 100)
        fastest = sorted(timeouts)[rank - 1] - 0.001  # Redis's clock counts whole milliseconds
        slowest = sorted(windows)[rank - 1]
        lowest = LATENCY_BUCKETS[latency_bucket_of(fastest)]
        highest = LATENCY_BUCKETS[latency_bucket_of(slowest)]
        assert lowest <= value <= highest, (name, value, fastest, slowest)


def test_latency_commands_the_proxy_cannot_answer_are_refused_clearly(ic):
    pc = ic.proxy.client()
    for sub in ("DOCTOR", "GRAPH command"):
        with pytest.raises(redis.ResponseError, match="not supported by kvstore-proxy"):
            pc.execute_command("LATENCY", *sub.split())
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        pc.execute_command("LATENCY", "HISTORY")
    assert b"LATENCY" in b"".join(pc.execute_command("LATENCY", "HELP"))


def test_a_group_that_does_not_answer_is_named_instead_of_failing_info(proxy_cluster):
    c = proxy_cluster(3)
    pc = c.proxy.client()
    for i in range(60):
        pc.set(f"k:{i}", "x")
    wait_until(lambda: pc.info("keyspace")["db0"]["keys"] == 60, 5, "60 keys")
    g2_keys = c.direct("g2").dbsize()
    c.nodes["g2"].signal(signal.SIGSTOP)
    try:
        time.sleep(1.1)  # the cached figures expire
        t0 = time.monotonic()
        text = info_text(c.proxy.port, "memory", "keyspace", "stats")
        assert time.monotonic() - t0 < 3
        parts = sections(text)
        for name in ("memory", "keyspace", "stats"):
            assert parts[name]["missing_groups"] == "g2", name
        assert parts["keyspace"]["db0"].startswith(f"keys={60 - g2_keys},")
        assert "missing_groups" not in fields(info_text(c.proxy.port, "server", "clients"))
    finally:
        c.nodes["g2"].signal(signal.SIGCONT)


# --- the tools people point at Redis ----------------------------------------------------------------


def redis_cli(port: int, *args: str, seconds: float | None = None) -> str:
    """Run redis-cli; one that never ends by itself (--stat, --latency) is stopped after ``seconds``."""
    argv = ["redis-cli", "-p", str(port), *args]
    if seconds is not None and shutil.which("stdbuf"):
        argv = ["stdbuf", "-oL", *argv]  # line-buffered: what it printed survives the stop
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds or 60)
        return out.stdout
    except subprocess.TimeoutExpired as exc:
        assert seconds is not None
        return (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")


def test_redis_cli_stat_shows_the_keys_written_memory_and_clients(ic):
    ic.flush_all()
    pc = ic.proxy.client()
    pc.mset({f"stat:{i}": "v" for i in range(123)})
    wait_until(lambda: pc.info("keyspace")["db0"]["keys"] == 123, 5, "123 keys")
    out = redis_cli(proxy_port(ic), "--stat", "-i", "0.2", seconds=2.0)
    rows = [ln.split() for ln in out.splitlines() if re.match(r"^\d+ ", ln)]
    assert rows, out
    for keys, mem, clients, blocked, requests, *_ in rows:
        assert keys == "123"
        assert re.fullmatch(r"\d+(\.\d+)?[BKMG]", mem), mem
        assert int(clients) >= 1 and blocked == "0" and int(requests) > 0


def test_redis_cli_bigkeys_and_memkeys_sample_every_key(ic):
    ic.flush_all()
    pc = ic.proxy.client()
    pc.mset({f"big:{i}": "v" * i for i in range(40)})
    pc.rpush("big:list", *range(25))
    pc.hset("big:hash", mapping={f"f{i}": i for i in range(7)})
    for mode in ("--bigkeys", "--memkeys"):
        out = redis_cli(proxy_port(ic), mode)
        assert "Sampled 42 keys in the keyspace!" in out, out
        assert "1 lists" in out and "1 hashs" in out and "40 strings" in out
    assert re.search(r"Biggest +list found '\"big:list\"' has 25 items", redis_cli(proxy_port(ic), "--bigkeys"))


def test_redis_cli_latency_measures_round_trips_through_the_proxy(ic):
    out = redis_cli(proxy_port(ic), "--latency", "--raw", seconds=2.5)
    lines = [ln.split() for ln in out.splitlines() if ln.strip()]
    assert lines, out
    lo, hi, avg, samples = lines[-1][:4]
    assert int(samples) > 10 and 0 <= float(lo) <= float(avg) <= float(hi)
