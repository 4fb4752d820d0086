"""Coalesced writes: backends and sessions that got data during a loop iteration are flushed once at its end."""

from __future__ import annotations

import asyncio
from typing import Any


class Outbox:
    """Collects dirty backends and client sessions; one ``call_soon`` flushes them all.

    Many clients' requests to one backend leave in one ``write``; a client whose replies came
    from several backends in one iteration gets them in one ``write`` too.
    """

    __slots__ = ("loop", "backends", "sessions", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.backends: list[Any] = []
        self.sessions: list[Any] = []
        self.scheduled = False

    def schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        self.scheduled = False
        backends = self.backends
        if backends:
            self.backends = []
            for b in backends:
                b.flush()
        sessions = self.sessions
        if sessions:
            self.sessions = []
            for s in sessions:
                s.flush()
