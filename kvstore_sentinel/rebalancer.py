"""After an automatic cache rejoin, run the data-moving ``kvstore-admin rebalance`` as its own process.

The sentinel gives a rejoined group slots only this way: taking slots from healthy groups without
their keys would lose those keys. The rebalance is a separate process (the admin's reshard
executor, resumable through the ``reshard`` znode) so the sentinel imports nothing of
kvstore_admin and its probe loop never waits on moving keys. One runs at a time.
"""

from __future__ import annotations

import asyncio
import os
import sys

import structlog

log = structlog.get_logger("kvstore.sentinel.rebalancer")

TAIL = 400  # characters of the admin's output kept in the log event


class Rebalancer:
    def __init__(self, zk: str, cluster: str, password: str | None = None):
        self.argv = [sys.executable, "-m", "kvstore_admin", "--zk", zk, "--cluster", cluster, "rebalance", "--json"]
        self.env = {**os.environ, **({"KVSTORE_REDIS_PASSWORD": password} if password else {})}
        self.task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self, reason: str) -> None:
        """Start a rebalance unless one is running (the running one will cover this group too)."""
        if self.running:
            return
        self.task = asyncio.get_running_loop().create_task(self._run(reason))

    async def _run(self, reason: str) -> None:
        log.warning("rebalance_started", reason=reason)
        proc = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await proc.communicate()
        except asyncio.CancelledError:
            # The sentinel is stopping or lost leadership: stop the admin; the reshard znode lets the
            # next rebalance resume where this one stopped.
            proc.terminate()
            await proc.wait()
            raise
        text = out.decode(errors="replace")[-TAIL:]
        if proc.returncode == 0:
            log.warning("rebalance_done", reason=reason, output=text)
        else:
            log.error("rebalance_failed", reason=reason, exit_code=proc.returncode, output=text)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
