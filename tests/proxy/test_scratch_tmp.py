import redis, pytest

def test_smoke(shared_cluster):
    c = shared_cluster.proxy.client()
    c.flushall()
    p = c.pipeline(transaction=True)
    p.set("{t}a", 1); p.incr("{t}a"); p.get("{t}a")
    assert p.execute() == [True, 2, b"2"]
    with pytest.raises(redis.ResponseError, match="same slot"):
        p = c.pipeline(transaction=True); p.set("a", 1); p.set("b", 2); p.execute()
    # watch
    with c.pipeline() as p:
        p.watch("{t}a")
        v = int(p.get("{t}a"))
        other = shared_cluster.proxy.client(); other.set("{t}a", 100)
        p.multi(); p.set("{t}a", v + 1)
        with pytest.raises(redis.WatchError):
            p.execute()
    assert c.get("{t}a") == b"100"
    def incr(pipe):
        v = int(pipe.get("{t}a")); pipe.multi(); pipe.set("{t}a", v + 1)
    c.transaction(incr, "{t}a")
    assert c.get("{t}a") == b"101"
    c3 = shared_cluster.proxy.client(protocol=3)
    p = c3.pipeline(transaction=True); p.hset("{t}h", "f", "v"); p.hgetall("{t}h")
    assert p.execute() == [1, {b"f": b"v"}]
    assert c.ping()

import threading, time

def test_block_smoke(shared_cluster):
    c = shared_cluster.proxy.client()
    c.flushall()
    t0 = time.monotonic()
    assert c.blpop(["q"], 0.5) is None
    assert 0.45 < time.monotonic() - t0 < 1.5
    out = []
    th = threading.Thread(target=lambda: out.append(shared_cluster.proxy.client().blpop(["q"], 5)))
    th.start(); time.sleep(0.3); c.rpush("q", "x"); th.join(5)
    assert out == [(b"q", b"x")]
    c3 = shared_cluster.proxy.client(protocol=3)
    c3.zadd("z", {"m": 1.5})
    assert list(c3.bzpopmin("z", 1)) == [b"z", b"m", 1.5]
    c.xadd("s", {"f": "v"})
    assert c.xread({"s": "0"}, block=100)[0][0] == b"s"
    assert c.xread({"s": "$"}, block=100) in ([], None)
    p = c.pipeline(transaction=False)
    p.blpop(["q"], 0.2); p.set("k", "v"); p.get("k")
    assert p.execute() == [None, True, b"v"]

def test_pubsub_smoke(shared_cluster):
    c = shared_cluster.proxy.client()
    ps = c.pubsub()
    ps.subscribe("ch1", "ch2")
    ps.psubscribe("ch*")
    for _ in range(3):
        m = ps.get_message(timeout=2); assert m["type"] in ("subscribe", "psubscribe"), m
    assert c.publish("ch1", "hello") == 2
    got = [ps.get_message(timeout=2) for _ in range(2)]
    assert sorted(m["type"] for m in got) == ["message", "pmessage"], got
    assert c.pubsub_numsub("ch1", "zz") == [(b"ch1", 1), (b"zz", 0)]
    assert c.pubsub_numpat() == 1
    assert sorted(c.pubsub_channels()) == [b"ch1", b"ch2"]
    ps.unsubscribe(); ps.punsubscribe()
    ps.close()
