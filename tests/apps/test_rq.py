"""rq through the proxy: jobs enqueued, run by a worker, results and failures seen by the application."""

from __future__ import annotations

import pytest
import redis

from .conftest import AppCluster
from .jobs import add, fail

rq = pytest.importorskip("rq")


def test_rq_worker_runs_enqueued_jobs(apps: AppCluster) -> None:
    apps.rules("rq", "rq:")  # docs/apps.md: every rq key in one slot (BLMOVE, MULTI and Lua across them)
    conn = redis.Redis.from_url(apps.url)
    queue = rq.Queue("default", connection=conn)
    jobs = [queue.enqueue(add, i, i) for i in range(10)]
    failing = queue.enqueue(fail)
    later = rq.Queue("low", connection=conn).enqueue(add, 100, 1)
    worker = rq.Worker([queue, rq.Queue("low", connection=conn)], connection=conn)
    assert worker.work(burst=True)
    assert [j.latest_result().return_value for j in jobs] == [2 * i for i in range(10)]
    assert later.latest_result().return_value == 101
    failing.refresh()
    assert failing.is_failed and "this job fails on purpose" in failing.latest_result().exc_string
    assert queue.failed_job_registry.count == 1 and queue.finished_job_registry.count == 10
    apps.check()
