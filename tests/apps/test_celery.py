"""Celery with the proxy as its Redis broker and result backend: delay().get() as an application does it."""

from __future__ import annotations

import pytest

from .conftest import AppCluster

celery = pytest.importorskip("celery")


def test_celery_delay_get(apps: AppCluster) -> None:
    # docs/apps.md: the default queue's lists (celery, celery\x06\x16N), kombu's bindings and
    # unacked bookkeeping in one slot; results (celery-task-meta-*) come with the "celery" prefix.
    apps.rules("celery", "celery", "_kombu.", "unacked")
    from celery.contrib.testing.worker import start_worker

    app = celery.Celery("kvstore_test", broker=apps.url, backend=apps.url)
    app.conf.update(broker_connection_retry_on_startup=True, task_acks_late=True, result_expires=300,
                    worker_hijack_root_logger=False)

    @app.task
    def mul(a: int, b: int) -> int:
        return a * b

    @app.task
    def boom() -> None:
        raise RuntimeError("task failed on purpose")

    # the default node name, celery@<host>: its remote-control queue celery@<host>.celery.pidbox is a "celery" key
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=20, hostname="celery@kvstore-test"):
        assert mul.delay(6, 7).get(timeout=30) == 42
        results = [mul.delay(i, 2) for i in range(10)]
        assert [r.get(timeout=30) for r in results] == [2 * i for i in range(10)]
        with pytest.raises(RuntimeError, match="task failed on purpose"):
            boom.delay().get(timeout=30)
        assert mul.apply_async((3, 3), priority=5).get(timeout=30) == 9
    apps.check()
