"""Leased backend connections: the per-worker and per-client caps, their errors, and the cluster option's record."""

from __future__ import annotations

import socket

import hiredis
import redis

from kvstore_admin.processes import wait_until
from kvstore_cluster import paths
from kvstore_cluster.options import ClusterOptions

from .stateful_helpers import exchange
from .test_commands import keys_on_every_group
from .test_resp3 import Raw

WORKER_CAP = b"-ERR max number of leased backend connections reached (kvstore-proxy --max-leases 3)\r\n"
CLIENT_CAP = (b"-ERR max number of leased backend connections per client reached "
              b"(kvstore-proxy --max-leases-per-client 2)\r\n")


def test_caps_answer_a_redis_like_error_and_free_leases_are_reused(proxy_cluster) -> None:
    cluster = proxy_cluster(3, "--max-leases", "3", "--max-leases-per-client", "2")
    port = cluster.proxy.port
    nodes = [cluster.direct(g) for g in cluster.nodes]
    keys = keys_on_every_group(cluster, 2)
    waiters = []
    try:
        for k in keys[:3]:  # one waiter per group: every lease is lent
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(hiredis.pack_command(("BLPOP", k, "0")))
            waiters.append(s)
        wait_until(lambda: sum(int(n.info("clients")["blocked_clients"]) for n in nodes) == 3, 10, "3 waiters")
        assert exchange(port, [("BLPOP", keys[3], "0")]) == [WORKER_CAP]
        assert exchange(port, [("MULTI",), ("INCR", keys[3]), ("EXEC",)])[-1] == WORKER_CAP
        assert exchange(port, [("GET", keys[3])]) == [b"$-1\r\n"]  # plain requests never need one
        # one waiter served: its lease is back, and the next client gets it (to any master)
        cluster.proxy.client().rpush(keys[0], "x")
        wait_until(lambda: exchange(port, [("MULTI",), ("INCR", keys[4]), ("EXEC",)])[-1] == b"*1\r\n:1\r\n",
                   10, "a free lease")
        # per client: a pattern subscriber needs one lease per group, 3 > 2
        sub = Raw(port)
        sub.send(("PSUBSCRIBE", "p*"))
        assert sub.read() in (CLIENT_CAP, WORKER_CAP)
        assert cluster.proxy.client().pubsub_numpat() == 0  # not subscribed anywhere
        sub.close()
    finally:
        for s in waiters:
            s.close()


def test_garbage_options_are_logged_and_the_last_good_ones_kept(shared_cluster) -> None:
    zk = shared_cluster.zk()
    path = paths.options(shared_cluster.name)
    port = shared_cluster.proxy.port
    spans = keys_on_every_group(shared_cluster, 1)
    script = [("MULTI",), ("SET", spans[0], "1"), ("SET", spans[1], "1"), ("EXEC",)]
    try:
        zk.create(path, ClusterOptions({"transactions": "per-group"}).encode())
        wait_until(lambda: exchange(port, script)[-1] == b"*2\r\n+OK\r\n+OK\r\n", 10, "per-group applied")
        log = shared_cluster.proxy.log
        for i, garbage in enumerate((b"{not json", b'{"format":1,"options":{"transactions":"sideways"}}',
                                     b'{"format":1,"options":{"nosuch":"x"}}', b'{"format":9,"options":{}}')):
            zk.set(path, garbage)
            wait_until(lambda i=i: log.read_text().count("options_rejected") > i, 10, "the rejection logged")
            assert exchange(port, script)[-1] == b"*2\r\n+OK\r\n+OK\r\n"  # still per-group
        zk.delete(path)  # no record: every default
        wait_until(lambda: exchange(port, script)[-1].startswith(b"-EXECABORT"), 10, "the default back")
    finally:
        if zk.exists(path):
            zk.delete(path)
        zk.stop()
        zk.close()
    assert redis.Redis(port=port).ping()
