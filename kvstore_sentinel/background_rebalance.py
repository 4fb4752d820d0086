"""After an automatic cache rejoin, rebalance the slots (with their keys) from this sentinel.

The sentinel gives a rejoined group slots only this way: taking slots from healthy groups
without their keys would lose those keys. The rebalance is the one ``kvstore-admin rebalance``
runs (kvstore_cluster.ops.rebalance), called as a function under this leader's fence plus a
stop flag: a leader that loses its lead, or a sentinel that stops, ends it at its next step or
MIGRATE batch, and the ``reshard`` znode lets the next rebalance resume where it stopped. It
runs on a thread of its own (the executor's ZooKeeper calls block, and the probe loop must
never wait on moving keys); a daemon thread, so a sentinel told to stop while ZooKeeper is
unreachable is not held by it. One runs at a time.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import structlog

from kvstore_cluster.ops.fence import Fence, Fenced
from kvstore_cluster.ops.rebalance import run_rebalance
from kvstore_cluster.ops.reshard import Options
from kvstore_cluster.store import Check, ClusterStore

log = structlog.get_logger("kvstore.sentinel.rebalance")

STOP_WAIT = 5.0  # seconds close() waits for the rebalance to notice it must stop


class StoppableFence:
    """``fence``, closed also once ``stop()`` is called."""

    def __init__(self, fence: Fence):
        self.fence = fence
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def check(self) -> None:
        if self._stopped.is_set():
            raise Fenced("the sentinel is stopping")
        self.fence.check()

    def zk_checks(self) -> list[Check]:
        self.check()
        return self.fence.zk_checks()


class BackgroundRebalance:
    def __init__(self, store: ClusterStore, fence: Fence, password: str | None = None):
        self.store = store
        self.fence = fence
        self.options = Options(password=password)
        self.task: asyncio.Task[None] | None = None
        self._stop: StoppableFence | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self, reason: str) -> None:
        """Start a rebalance unless one is running (the running one will cover this group too)."""
        if self.running:
            return
        self._stop = StoppableFence(self.fence)
        self.task = asyncio.get_running_loop().create_task(self._run(reason, self._stop))

    async def _run(self, reason: str, fence: StoppableFence) -> None:
        log.warning("rebalance_started", reason=reason)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[dict[str, Any]] = loop.create_future()

        def work() -> None:
            try:
                out = run_rebalance(self.store, self.options, fence=fence)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, which reports it
                loop.call_soon_threadsafe(_settle, done, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, out, None)

        threading.Thread(target=work, name="rebalance", daemon=True).start()
        try:
            out = await done
        except Fenced as exc:
            log.warning("rebalance_stopped", reason=reason, why=str(exc),
                        hint="the next rebalance resumes it ('kvstore-admin rebalance')")
        except Exception as exc:  # noqa: BLE001 - a failed rebalance must not end the sentinel
            log.error("rebalance_failed", reason=reason, error=f"{type(exc).__name__}: {exc}")
        else:
            log.warning("rebalance_done", reason=reason, status=out["status"], slots_moved=out.get("slots_moved"),
                        keys_moved=out.get("keys_moved"), unowned_assigned=out.get("unowned_assigned"))

    async def close(self) -> None:
        """Stop the rebalance in progress (it stops at its next step or batch; waits a little for that)."""
        if self.task is None or self._stop is None:
            return
        self._stop.stop()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), STOP_WAIT)
        except (TimeoutError, asyncio.CancelledError):
            log.warning("rebalance_still_stopping", hint="the reshard znode keeps its state; it resumes later")


def _settle(future: asyncio.Future[dict[str, Any]], result: dict[str, Any] | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert result is not None
        future.set_result(result)
