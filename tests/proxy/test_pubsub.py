"""Pub/sub across 2 proxies and 3 groups: exactly once, patterns, keyspace notifications, RESP2/RESP3, limits."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator

import hiredis
import pytest
import redis

from kvstore_admin.processes import wait_until
from kvstore_cluster.slots import key_slot
from kvstore_proxy.pubsub import channel_slot

from .conftest import ProxyProcess
from .stateful_helpers import exchange
from .test_commands import keys_on_every_group
from .test_resp3 import Raw


@pytest.fixture(scope="module")
def second_proxy(shared_cluster, tmp_path_factory) -> Iterator[ProxyProcess]:  # type: ignore[no-untyped-def]
    proxy = ProxyProcess(shared_cluster.zk_hosts, shared_cluster.name,
                         tmp_path_factory.mktemp("second") / "proxy.log")
    try:
        yield proxy
    finally:
        proxy.stop()


def _drain(ps: redis.client.PubSub, n: int, timeout: float = 10.0) -> list[dict]:
    """The next ``n`` messages (not confirmations); then makes sure no extra one is waiting."""
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m = ps.get_message(timeout=0.2)
        if m is not None and m["type"] in ("message", "pmessage", "smessage"):
            out.append(m)
    extra = ps.get_message(timeout=0.3)
    assert extra is None, f"an extra message arrived: {extra}"
    return out


def _subscribed(ps: redis.client.PubSub, n: int) -> None:
    got = 0
    deadline = time.monotonic() + 10
    while got < n and time.monotonic() < deadline:
        m = ps.get_message(timeout=0.2)
        if m is not None and m["type"].endswith("subscribe"):
            got += 1
    assert got == n


def test_channel_slot_is_the_name_or_the_notified_key() -> None:
    assert channel_slot(b"news") == key_slot(b"news")
    assert channel_slot(b"{user1}:feed") == key_slot(b"user1")
    assert channel_slot(b"__keyspace@0__:{user1}:cart") == key_slot(b"user1")
    assert channel_slot(b"__keyspace@0__:") == key_slot(b"")


def test_messages_reach_every_subscriber_exactly_once_across_proxies_and_groups(shared_cluster, second_proxy) -> None:
    channels = keys_on_every_group(shared_cluster, 3)  # channel names in every group
    a = shared_cluster.proxy.client(protocol=2).pubsub()
    b = redis.Redis(port=second_proxy.port, protocol=3).pubsub()
    a.subscribe(*channels)
    b.subscribe(*channels[:4])
    b.psubscribe("key:*", "nomatch*")
    _subscribed(a, len(channels))
    _subscribed(b, 6)
    publishers = [shared_cluster.proxy.client(), redis.Redis(port=second_proxy.port, protocol=3)]
    sent: Counter[tuple[bytes, bytes]] = Counter()
    for i, ch in enumerate(channels):
        for p in publishers:
            data = b"m%d" % i + b"-%d" % p.connection_pool.connection_kwargs["port"]
            receivers = p.publish(ch, data)
            # a: the channel; b: its channel (first 4) and the pattern key:*
            assert receivers == 1 + (i < 4) + ch.startswith(b"key:")
            sent[(ch, data)] += 1
    got_a = Counter((m["channel"], m["data"]) for m in _drain(a, 2 * len(channels)))
    assert got_a == sent
    got_b = _drain(b, 2 * 4 + 2 * len(channels))
    assert Counter((m["channel"], m["data"]) for m in got_b if m["type"] == "message") == Counter(
        {k: v for k, v in sent.items() if k[0] in channels[:4]})
    assert Counter((m["channel"], m["data"]) for m in got_b if m["type"] == "pmessage") == sent
    # PUBSUB, across the groups and both proxies
    assert set(publishers[0].pubsub_channels()) == set(channels)
    assert set(publishers[1].pubsub_channels(b"key:*")) == set(channels)
    assert publishers[0].pubsub_numsub(*channels[3:5], "nobody") == [(channels[3], 2), (channels[4], 1),
                                                                     (b"nobody", 0)]
    assert publishers[1].pubsub_numpat() == 2
    a.close()
    b.close()
    wait_until(lambda: publishers[0].pubsub_numpat() == 0 and not publishers[0].pubsub_channels(), 10,
               "closed subscribers to be gone from every group")


def test_shard_channels(shared_cluster, second_proxy) -> None:
    s = redis.Redis(port=second_proxy.port, protocol=3).pubsub()
    s.ssubscribe("{s}orders", "other")
    _subscribed(s, 2)
    p = shared_cluster.proxy.client()
    assert p.spublish("{s}orders", "o1") == 1
    assert p.publish("{s}orders", "not for shard subscribers") == 0
    got = _drain(s, 1)
    assert (got[0]["type"], got[0]["channel"], got[0]["data"]) == ("smessage", b"{s}orders", b"o1")
    assert set(p.execute_command("PUBSUB", "SHARDCHANNELS")) == {b"{s}orders", b"other"}
    assert p.execute_command("PUBSUB", "SHARDNUMSUB", "other", "none") == [b"other", 1, b"none", 0]
    s.close()


def test_keyspace_notifications_are_delivered_once_from_the_group_holding_the_key(shared_cluster,
                                                                                  second_proxy) -> None:
    nodes = [shared_cluster.direct(g) for g in shared_cluster.nodes]
    for n in nodes:
        n.config_set("notify-keyspace-events", "KEA")
    try:
        keys = keys_on_every_group(shared_cluster, 2)
        ps = redis.Redis(port=second_proxy.port, protocol=2).pubsub()
        ps.subscribe(*[b"__keyspace@0__:" + k for k in keys])
        ps.psubscribe("__keyevent@0__:*")
        _subscribed(ps, len(keys) + 1)
        c = shared_cluster.proxy.client()
        for k in keys:
            c.set(k, "v")
        got = _drain(ps, 2 * len(keys))
        space = [(m["channel"], m["data"]) for m in got if m["type"] == "message"]
        events = [(m["channel"], m["data"]) for m in got if m["type"] == "pmessage"]
        assert sorted(space) == sorted((b"__keyspace@0__:" + k, b"set") for k in keys)
        assert sorted(events) == sorted((b"__keyevent@0__:set", k) for k in keys)
        ps.close()
    finally:
        for n in nodes:
            n.config_set("notify-keyspace-events", "")


@pytest.mark.parametrize("protocol", [2, 3])
def test_subscribe_confirmations_and_modes_are_those_of_one_redis_server(shared_cluster, model_server,
                                                                        protocol: int) -> None:
    script = [("SUBSCRIBE", "a", "b", "a"), ("PSUBSCRIBE", "x*"), ("SSUBSCRIBE", "s1"), ("PING",), ("PING", "hi"),
              ("GET", "k"), ("CLIENT", "ID"), ("UNSUBSCRIBE", "zz", "a"), ("UNSUBSCRIBE",), ("PUNSUBSCRIBE",),
              ("PUNSUBSCRIBE",), ("GET", "k"), ("SUNSUBSCRIBE",), ("GET", "k"), ("UNSUBSCRIBE",), ("SUNSUBSCRIBE",)]
    proxied = exchange(shared_cluster.proxy.port, script, protocol, frames=True)
    direct = exchange(model_server.port, script, protocol, frames=True)
    if protocol == 3:  # CLIENT ID differs
        at = next(i for i, r in enumerate(direct) if r.startswith(b":") and i > 6)
        assert proxied[at].startswith(b":")
        proxied[at] = direct[at]
    assert proxied == direct


def test_resp3_subscriber_runs_commands_between_push_messages(shared_cluster) -> None:
    sub = Raw(shared_cluster.proxy.port)
    try:
        sub.call("HELLO", "3")
        assert sub.call("SUBSCRIBE", "news") == b">3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
        assert sub.call("SET", "{r}k", "v") == b"+OK\r\n"
        listed = shared_cluster.proxy.client().client_list(_type="pubsub")
        assert [(c["sub"], c["flags"]) for c in listed] == [("1", "P")]
        assert sub.call("PUBLISH", "news", "hello") == b":1\r\n"  # its own message, after the reply
        assert sub.read() == b">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
        shared_cluster.proxy.client().publish("news", "again")
        assert sub.read() == b">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nagain\r\n"
        assert sub.call("GET", "{r}k") == b"$1\r\nv\r\n"
        assert sub.call("PING") == b"+PONG\r\n"
        assert sub.call("RESET") == b"+RESET\r\n"
        assert shared_cluster.proxy.client().publish("news", "nobody") == 0
    finally:
        sub.close()


def test_a_subscriber_that_stops_reading_is_disconnected_at_the_output_limit(shared_cluster, tmp_path) -> None:
    proxy = ProxyProcess(shared_cluster.zk_hosts, shared_cluster.name, tmp_path / "p.log",
                         "--pubsub-output-limit", "256kb 0 0")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.connect(("127.0.0.1", proxy.port))
        sock.sendall(hiredis.pack_command(("SUBSCRIBE", "firehose")))
        pub = redis.Redis(port=proxy.port)
        wait_until(lambda: pub.pubsub_numsub("firehose") == [(b"firehose", 1)], 10, "the subscription")
        payload = b"x" * 65536
        for _ in range(200):  # 13 MB the subscriber never reads
            if pub.publish("firehose", payload) == 0:
                break
        wait_until(lambda: pub.pubsub_numsub("firehose") == [(b"firehose", 0)], 10, "the slow subscriber's end")
        assert "pubsub_client_too_slow" in proxy.output()
        assert pub.ping()
    finally:
        sock.close()
        proxy.stop()
