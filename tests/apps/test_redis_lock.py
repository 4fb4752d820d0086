"""python-redis-lock through the proxy: mutual exclusion, and a waiter woken when the lock is released."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from .conftest import AppCluster

redis_lock = pytest.importorskip("redis_lock")


def test_locks_exclude_each_other_and_wake_waiters(apps: AppCluster) -> None:
    # docs/apps.md: a lock's Lua scripts use two keys, lock:NAME and lock-signal:NAME: both prefixes
    # in one slot (so every lock is served by one group).
    apps.rules("redis-lock", "lock:", "lock-signal:")
    conn = redis.Redis.from_url(apps.url)
    inside: list[int] = []
    overlaps: list[int] = []
    counter = {"n": 0}

    def worker(i: int) -> None:
        client = redis.Redis.from_url(apps.url)
        for _ in range(5):
            with redis_lock.Lock(client, "shared", expire=30):
                inside.append(i)
                if len(inside) > 1:
                    overlaps.append(i)
                n = counter["n"]
                time.sleep(0.002)
                counter["n"] = n + 1
                inside.remove(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not overlaps and counter["n"] == 20

    # a waiter blocked on the lock (BLPOP on its signal key) gets it as soon as it is released
    holder = redis_lock.Lock(conn, "handoff", expire=30)
    assert holder.acquire()
    got: list[float] = []
    waiter = threading.Thread(target=lambda: got.append(
        time.monotonic() if redis_lock.Lock(redis.Redis.from_url(apps.url), "handoff", expire=30).acquire(timeout=20)
        else -1.0))
    waiter.start()
    deadline = time.monotonic() + 10
    while not conn.client_list(_type="normal") or not any(c.get("cmd") == "blpop" for c in conn.client_list()):
        assert time.monotonic() < deadline, "the waiter never blocked"
        time.sleep(0.02)
    released = time.monotonic()
    holder.release()
    waiter.join(20)
    assert got and got[0] > 0 and got[0] - released < 2.0
    apps.check()
