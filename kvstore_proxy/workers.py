"""``--workers N``: a parent that forks N full proxies on one SO_REUSEPORT port and restarts crashed ones.

The parent binds nothing itself and opens no ZooKeeper session (each child has its own). It:

- forks N children, each running :func:`server.run` with its own ``SO_REUSEPORT`` socket;
- restarts a child that exits without being asked to, after a backoff that doubles from 0.5 s to
  30 s and resets once a child has stayed up for a minute; a child that fails at startup (exit
  code 2: bad config, ZooKeeper unreachable, port taken) is not restarted, and the parent exits
  with that code once no child is left;
- on SIGTERM/SIGINT forwards SIGTERM to every child (they stop accepting, drain, deregister) and
  exits 0 once all are gone, SIGKILLing stragglers after ``drain_timeout`` + 5 s;
- gives the children one :class:`~kvstore_proxy.siblings.Family`: the proxy's run id and start
  time, and a private directory for the sockets they talk to each other through (siblings.py),
  removed when the parent exits.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import replace

import structlog

from kvstore_proxy.config import ProxyConfig
from kvstore_proxy.siblings import Family, make_directory, remove_directory

log = structlog.get_logger("kvstore.proxy.workers")

STARTUP_FAILED = 2
BACKOFF_MIN, BACKOFF_MAX, STABLE_AFTER = 0.5, 30.0, 60.0


def _child(config: ProxyConfig, family: Family) -> None:
    from kvstore_proxy import server

    index = family.index
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker handles it (reload_tls)
    code = 1
    try:
        code = server.run(config, family=family)
    except BaseException as exc:  # noqa: BLE001 - report, then leave with a non-zero code
        log.exception("worker_crashed", worker=index, error=str(exc))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def supervise(config: ProxyConfig) -> int:
    directory = make_directory()
    try:
        return _supervise(config, Family(workers=config.workers, directory=directory))
    finally:
        remove_directory(directory)


def _supervise(config: ProxyConfig, family: Family) -> int:
    n = config.workers
    child_config = replace(config, workers=n)
    children: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
    backoff = [BACKOFF_MIN] * n
    stopping = False
    exit_code = 0

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            _child(child_config, replace(family, index=index))
        children[pid] = (index, time.monotonic())
        log.info("worker_started", worker=index, pid=pid)

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info("workers_stopping", signal=signal.Signals(signum).name, workers=len(children))
            for pid in children:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def on_hangup(signum: int, frame: object) -> None:
        for pid in children:  # each worker reloads its TLS certificate (server.Worker.reload_tls)
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    for i in range(n):
        spawn(i)
    restarts: list[tuple[float, int]] = []
    stop_deadline: float | None = None
    while children or restarts:
        if stopping and stop_deadline is None:
            stop_deadline = time.monotonic() + config.drain_timeout + 5.0
            restarts.clear()
        if stop_deadline is not None and time.monotonic() > stop_deadline:
            for pid in list(children):
                log.warning("worker_killed", pid=pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            stop_deadline = time.monotonic() + 5.0
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid == 0:
            now = time.monotonic()
            due = [r for r in restarts if r[0] <= now]
            for r in due:
                restarts.remove(r)
                if not stopping:
                    spawn(r[1])
            time.sleep(0.05)
            continue
        index, started = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            log.info("worker_exited", worker=index, pid=pid, code=code)
            continue
        if code == STARTUP_FAILED:
            log.error("worker_start_failed", worker=index, pid=pid)
            exit_code = STARTUP_FAILED
            on_signal(signal.SIGTERM, None)
            continue
        lived = time.monotonic() - started
        if lived > STABLE_AFTER:
            backoff[index] = BACKOFF_MIN
        delay = backoff[index]
        backoff[index] = min(delay * 2, BACKOFF_MAX)
        log.error("worker_died", worker=index, pid=pid, code=code, restart_in=delay)
        restarts.append((time.monotonic() + delay, index))
    return exit_code
