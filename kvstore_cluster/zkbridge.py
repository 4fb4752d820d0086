"""Deliver kazoo watch and connection events (kazoo threads) to an asyncio loop; no logic runs there."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.protocol.states import ZnodeStat


class LoopBridge:
    """Hands kazoo callbacks to ``loop`` with ``call_soon_threadsafe``."""

    def __init__(self, client: KazooClient, loop: asyncio.AbstractEventLoop):
        self.client = client
        self.loop = loop
        self._closed = False

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._closed or self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # loop closed between the check and the call

    def watch_data(self, path: str,
                   callback: Callable[[bytes | None, ZnodeStat | None], None]) -> None:
        """Call ``callback(data, stat)`` on the loop with the znode's content now and on every change.

        kazoo's DataWatch re-reads the node on each event, so the data handed over is fresh, never
        the event's payload.
        """

        def on_change(data: bytes | None, stat: ZnodeStat | None, event: Any = None) -> bool | None:
            if self._closed:
                return False  # stop watching
            self._post(callback, data, stat)
            return None

        self.client.DataWatch(path, on_change)

    def watch_children(self, path: str, callback: Callable[[list[str]], None]) -> None:
        """Call ``callback(names)`` on the loop with the znode's children now and on every change."""

        def on_change(children: list[str]) -> bool | None:
            if self._closed:
                return False
            self._post(callback, list(children))
            return None

        self.client.ChildrenWatch(path, on_change)

    def watch_state(self, callback: Callable[[KazooState], None]) -> None:
        """Call ``callback(state)`` on the loop on every connection state change."""

        def listener(state: KazooState) -> None:
            self._post(callback, state)

        self.client.add_listener(listener)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking kazoo call off the loop."""
        return await self.loop.run_in_executor(None, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._closed = True
