"""Prometheus metrics of a proxy (two workers) and a sentinel, scraped during a load and a failover."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import redis
from observe_helpers import get, raw_request, scrape, status_of
from sentinel_helpers import FAST

from kvstore_admin.processes import free_port, wait_until
from kvstore_cluster.store import ClusterStore, connect


def _groups_version(zk_hosts: str) -> tuple[int, str]:
    client = connect(zk_hosts)
    try:
        groups = ClusterStore(client, "test").read_groups()
        return groups.version, groups.value.get("g1").master  # type: ignore[union-attr]
    finally:
        client.stop()
        client.close()


def test_proxy_and_sentinel_metrics_follow_a_load_and_a_failover(make_cluster, proxy_factory, sentinels) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(groups=2, replicas=1, mode="datastore")
    pport, sport = free_port(), free_port()
    proxy = proxy_factory.start(cluster.zk_hosts, "test", "--metrics-listen", f"127.0.0.1:{pport}",
                                "--zk-session-timeout", "4", workers=2)
    sentinel = sentinels.start(cluster.zk_hosts, "test", *FAST, "--metrics-listen", f"127.0.0.1:{sport}")
    old_master = cluster.nodes["g1"][0]

    # Connected first: redis-py's handshake on connect gets an error reply from the proxy.
    clients = [redis.Redis(port=proxy.port, socket_timeout=10) for _ in range(8)]
    for c in clients:
        c.ping()
    before = scrape(pport)
    assert before.value("kvstore_proxy_workers") == 2
    assert before.value("kvstore_proxy_workers_missing") == 0
    assert before.types["kvstore_proxy_request_duration_seconds"] == "histogram"  # latency tracking: the default
    for gid in ("g1", "g2"):
        assert before.value("kvstore_proxy_backend_up", group=gid, address=cluster.nodes[gid][0].address) == 1

    # A load over several connections, which the kernel spreads over both workers: every worker counts.
    for i, c in enumerate(clients):
        pipe = c.pipeline(transaction=False)
        for j in range(200):
            pipe.set(f"k{i}:{j}", j)
        pipe.execute()
        assert c.get(f"k{i}:0") == b"0"
    for _ in range(8):
        assert raw_request(proxy.port, b"NOSUCHCOMMAND\r\nQUIT\r\n").startswith(b"-ERR unknown command")
    during = scrape(pport)
    sets = during.value("kvstore_proxy_requests_total", command="set") - before.sum(
        "kvstore_proxy_requests_total", command="set")
    assert sets == 1600
    assert during.value("kvstore_proxy_requests_total", command="get") - before.sum(
        "kvstore_proxy_requests_total", command="get") == 8
    assert during.value("kvstore_proxy_errors_total", kind="ERR") - before.sum("kvstore_proxy_errors_total",
                                                                                kind="ERR") == 8
    # The latency histogram, both workers' counts added up: cumulative buckets, +Inf = every SET answered.
    buckets = sorted(((float(lab["le"]), v) for lab, v in during.all("kvstore_proxy_request_duration_seconds_bucket",
                                                                     command="set")))
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1][0] == float("inf")
    assert counts[-1] == during.value("kvstore_proxy_request_duration_seconds_count", command="set") \
        == during.value("kvstore_proxy_requests_total", command="set")
    assert counts[-2] == counts[-1]  # every SET answered within 10 s
    assert during.value("kvstore_proxy_request_duration_seconds_sum", command="set") > 0
    assert during.value("kvstore_proxy_connected_clients") >= 8
    assert during.value("kvstore_proxy_connections_received_total") >= 8

    wait_until(lambda: scrape(sport).sum("kvstore_sentinel_node_up") == 4, 10,
               "the sentinel's first probes of the four nodes")
    s0 = scrape(sport)
    assert s0.value("kvstore_sentinel_leader") == 1
    assert s0.value("kvstore_sentinel_zookeeper_connected") == 1
    for gid, procs in cluster.nodes.items():
        for i, p in enumerate(procs):
            role = "master" if i == 0 else "replica"
            assert s0.value("kvstore_sentinel_node_up", node=p.address, group=gid, role=role) == 1
            assert 0 < s0.value("kvstore_sentinel_probe_seconds", node=p.address, group=gid) < 1
            assert s0.value("kvstore_sentinel_node_diverged", node=p.address, group=gid) == 0
        assert s0.value("kvstore_sentinel_group_state", group=gid, state="ok") == 1
    assert s0.all("kvstore_sentinel_failovers_total") == []

    # A failover under load: the master of g1 dies, the sentinel promotes its replica.
    stop = threading.Event()
    writer = redis.Redis(port=proxy.port, socket_timeout=10)

    def load() -> None:
        n = 0
        while not stop.is_set():
            try:
                writer.set(f"load{n}", n)
            except redis.RedisError:
                time.sleep(0.01)
            n += 1

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        old_master.stop(timeout=5)
        sentinel.wait_event("failover_done", timeout=30, group="g1")
        version, new_master = _groups_version(cluster.zk_hosts)
        assert new_master == cluster.nodes["g1"][1].address

        def proxy_caught_up() -> bool:
            after = scrape(pport)
            return (after.value("kvstore_proxy_table_version", table="groups") == version
                    and after.value("kvstore_proxy_backend_up", group="g1", address=new_master) == 1)

        wait_until(proxy_caught_up, 15, "the proxy's metrics to show the new master of g1")
    finally:
        stop.set()
        loader.join(10)
    after = scrape(pport)
    assert after.value("kvstore_proxy_table_version_seen", table="groups") == version
    assert after.all("kvstore_proxy_backend_up", group="g1", address=old_master.address) == []
    assert after.value("kvstore_proxy_requests_total", command="set") > during.value(
        "kvstore_proxy_requests_total", command="set")

    # The sentinel reads the new groups at its next round.
    wait_until(lambda: scrape(sport).all("kvstore_sentinel_node_up", node=old_master.address, role="replica"), 10,
               "the sentinel's metrics to show the old master as a replica")
    s1 = scrape(sport)
    assert s1.value("kvstore_sentinel_failovers_total", group="g1", mode="datastore", result="promoted") == 1
    assert s1.value("kvstore_sentinel_failover_duration_seconds_count", group="g1", mode="datastore",
                    result="promoted") == 1
    assert 0 < s1.value("kvstore_sentinel_failover_duration_seconds_sum", group="g1", mode="datastore",
                        result="promoted") < 30
    assert s1.value("kvstore_sentinel_node_up", node=old_master.address, group="g1", role="replica") == 0
    assert s1.value("kvstore_sentinel_node_down", node=old_master.address, group="g1") == 1
    assert s1.value("kvstore_sentinel_node_up", node=new_master, group="g1", role="master") == 1
    assert s1.value("kvstore_sentinel_group_state", group="g1", state="ok") == 1
    assert s1.all("kvstore_sentinel_failover_running_seconds") == []
    assert s1.value("kvstore_sentinel_probe_rounds_total") > s0.value("kvstore_sentinel_probe_rounds_total")
    for c in clients:
        c.close()
    writer.close()


def test_metrics_endpoints_answer_bad_requests_with_4xx(make_cluster, proxy_factory, sentinels) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(groups=1)
    pport, sport = free_port(), free_port()
    proxy = proxy_factory.start(cluster.zk_hosts, "test", "--metrics-listen", f"127.0.0.1:{pport}",
                                "--no-latency-tracking")
    sentinels.start(cluster.zk_hosts, "test", *FAST, "--metrics-listen", f"127.0.0.1:{sport}")
    # With --no-latency-tracking the latency is a summary: the count and the sum only.
    client = redis.Redis(port=proxy.port)
    for i in range(50):
        client.set(f"h{i}", i)
    summary = scrape(pport)
    assert summary.types["kvstore_proxy_request_duration_seconds"] == "summary"
    assert summary.value("kvstore_proxy_request_duration_seconds_count", command="set") == 50
    assert summary.value("kvstore_proxy_request_duration_seconds_sum", command="set") > 0
    assert summary.all("kvstore_proxy_request_duration_seconds_bucket") == []
    assert client.info("latencystats") == {} and client.execute_command("LATENCY", "HISTOGRAM") == {}  # RESP3
    for port in (pport, sport):
        assert get(port, "/nope")[0] == 404
        assert get(port, "/metrics/x")[0] == 404
        assert status_of(raw_request(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")) == 405
        assert b"Allow: GET, HEAD" in raw_request(port, b"DELETE /metrics HTTP/1.1\r\n\r\n")
        assert status_of(raw_request(port, b"garbage\r\n\r\n")) == 400
        assert status_of(raw_request(port, b"GET /metrics HTTP/1.1\r\nBad header\r\n\r\n")) == 400
        assert status_of(raw_request(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")) == 431
        assert status_of(raw_request(port, b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")) == 413
        head = raw_request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status_of(head) == 200 and head.endswith(b"\r\n\r\n")
        assert scrape(port).samples  # still serving
    assert redis.Redis(port=proxy.port).ping()


def test_metrics_keep_answering_while_zookeeper_is_unreachable(make_cluster, proxy_factory, sentinels,  # type: ignore[no-untyped-def]
                                                               zk_relay) -> None:
    make_cluster(groups=1)
    pport, sport = free_port(), free_port()
    proxy_factory.start(zk_relay.hosts, "test", "--metrics-listen", f"127.0.0.1:{pport}",
                        "--zk-session-timeout", "3")
    sentinels.start(zk_relay.hosts, "test", *FAST, "--metrics-listen", f"127.0.0.1:{sport}")
    assert scrape(pport).value("kvstore_proxy_zookeeper_connected_workers") == 1
    # NaN until the sentinel's first round has read the cluster.
    wait_until(lambda: scrape(sport).value("kvstore_sentinel_cluster_read_age_seconds") < 2, 10,
               "the sentinel's first read of the cluster")
    zk_relay.cut()
    try:
        wait_until(lambda: scrape(pport).value("kvstore_proxy_zookeeper_connected_workers") == 0, 10,
                   "the proxy's metrics to show ZooKeeper unreachable")
        wait_until(lambda: scrape(pport).value("kvstore_proxy_fenced_workers") == 1, 10, "the proxy fenced")
        wait_until(lambda: scrape(sport).value("kvstore_sentinel_zookeeper_connected") == 0, 10,
                   "the sentinel's metrics to show ZooKeeper unreachable")
        started = time.monotonic()
        stale = scrape(sport)
        assert time.monotonic() - started < 2  # a scrape does not wait for ZooKeeper
        assert stale.value("kvstore_sentinel_cluster_read_age_seconds") > 1.5
        assert stale.value("kvstore_sentinel_leader") == 0
        assert stale.all("kvstore_sentinel_node_up")  # the last known figures are still there
    finally:
        zk_relay.heal()
    wait_until(lambda: scrape(pport).value("kvstore_proxy_fenced_workers") == 0, 20, "the proxy unfenced")
    wait_until(lambda: scrape(sport).value("kvstore_sentinel_cluster_read_age_seconds") < 2, 20,
               "the sentinel reading ZooKeeper again")


def test_metrics_flag_refuses_bad_addresses_and_taken_ports(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(groups=1)
    common = ["--zk", cluster.zk_hosts, "--cluster", "test"]
    for module in ("kvstore_proxy", "kvstore_sentinel"):
        bad = subprocess.run([sys.executable, "-m", module, *common, "--metrics-listen", "no-port"],
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "HOST:PORT" in bad.stderr, (module, bad.stderr)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        proxy = subprocess.run([sys.executable, "-m", "kvstore_proxy", *common, "--listen", f"127.0.0.1:{free_port()}",
                                "--workers", "1", "--metrics-listen", address], capture_output=True, text=True,
                               timeout=60)
        assert proxy.returncode == 2 and f"cannot serve metrics on {address}" in proxy.stderr, proxy.stderr
        sentinel = subprocess.run([sys.executable, "-m", "kvstore_sentinel", *common, "--metrics-listen", address],
                                  capture_output=True, text=True, timeout=60)
        assert sentinel.returncode == 1 and f"cannot serve metrics on {address}" in sentinel.stderr, sentinel.stderr

