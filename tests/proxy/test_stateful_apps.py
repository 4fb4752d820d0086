"""Unmodified applications that batch unrelated keys in MULTI/EXEC: Django's cache, with ``transactions per-group``.

Applications that need key rules instead (rq, Celery, Dramatiq, python-redis-lock) are in tests/apps/,
with the rules docs/apps.md gives them.
"""

from __future__ import annotations

import pytest
import redis
from click.testing import CliRunner

from kvstore_admin.cli import cli
from kvstore_admin.processes import wait_until

from .stateful_helpers import exchange
from .test_commands import keys_on_every_group


@pytest.fixture(scope="module")
def per_group(shared_cluster):  # type: ignore[no-untyped-def]
    """The module's cluster with ``transactions per-group``, as these applications need."""

    def option(value: str) -> None:
        result = CliRunner().invoke(cli, ["--zk", shared_cluster.zk_hosts, "--cluster", shared_cluster.name,
                                          "option", "set", "transactions", value], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    option("per-group")
    a, b = keys_on_every_group(shared_cluster, 1)[:2]
    wait_until(lambda: exchange(shared_cluster.proxy.port, [("MULTI",), ("SET", a, "1"), ("SET", b, "1"),
                                                           ("EXEC",)])[-1] == b"*2\r\n+OK\r\n+OK\r\n",
               10, "the proxy to apply transactions per-group")
    try:
        yield shared_cluster
    finally:
        option("single-slot")


def test_django_cache_set_many_get_many_delete_many(per_group) -> None:
    pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        settings.configure(CACHES={"default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{per_group.proxy.port}/0"}})
    from django.core.cache import caches

    cache = caches["default"]
    per_group.flush_all()
    data = {f"item:{i}": {"n": i, "tags": ["a", "b"]} for i in range(60)}  # keys over every group
    assert cache.set_many(data, timeout=300) == []  # one MULTI/EXEC: MSET and an EXPIRE per key
    assert cache.get_many(list(data)) == data
    assert cache.incr("item:counter", 5) if cache.add("item:counter", 1) else True
    assert cache.get("item:counter") == 6
    cache.delete_many(list(data))
    assert cache.get_many(list(data)) == {}
    assert redis.Redis(port=per_group.proxy.port).dbsize() == 1


def test_per_group_transactions_split_multi_key_commands_and_merge_them(per_group) -> None:
    keys = keys_on_every_group(per_group, 2)
    port = per_group.proxy.port
    replies = exchange(port, [("MULTI",), ("MSET", *[x for k in keys for x in (k, b"v" + k)]), ("MGET", *keys, "none"),
                              ("EXISTS", *keys), ("INCR", keys[0]), ("DEL", *keys), ("EXEC",)], protocol=3)
    values = b"".join(b"$%d\r\nv%s\r\n" % (len(k) + 1, k) for k in keys)
    assert replies[-1] == (b"*5\r\n+OK\r\n*%d\r\n" % (len(keys) + 1) + values + b"_\r\n:%d\r\n" % len(keys)
                           + b"-ERR value is not an integer or out of range\r\n:%d\r\n" % len(keys))
