"""Dramatiq with the proxy as its Redis broker and result backend: its Lua dispatch script over one namespace."""

from __future__ import annotations

import pytest

from .conftest import AppCluster

dramatiq = pytest.importorskip("dramatiq")


def test_dramatiq_actors_run_and_return_results(apps: AppCluster) -> None:
    # docs/apps.md: the broker's Lua script builds every key from its namespace ("dramatiq"):
    # all of them, the namespace key itself included, in one slot. Results have their own prefix.
    apps.rules("dramatiq", "dramatiq")
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker = RedisBroker(url=apps.url)
    broker.add_middleware(Results(backend=RedisBackend(url=apps.url)))
    dramatiq.set_broker(broker)

    @dramatiq.actor(store_results=True, max_retries=0)
    def square(x: int) -> int:
        return x * x

    @dramatiq.actor(store_results=True, max_retries=0, queue_name="other")
    def shout(text: str) -> str:
        return text.upper()

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        messages = [square.send(i) for i in range(12)]
        assert [m.get_result(block=True, timeout=30_000) for m in messages] == [i * i for i in range(12)]
        assert shout.send("kvstore").get_result(block=True, timeout=30_000) == "KVSTORE"
        broker.join(square.queue_name, timeout=30_000)
    finally:
        worker.stop()
        broker.close()
    apps.check()
