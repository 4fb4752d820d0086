"""The proxy's own questions to every group's master (INFO behind the proxy's INFO), cached briefly.

A probe rides the group's shared backend connection like any request (Redis answers in order)
and is answered by the first of: the master's reply, the backend's failure, or ``ASK_TIMEOUT``;
a group that does not answer is reported as such, never waited for longer. The groups' INFO is
fetched at most once per ``CACHE_SECONDS`` however many clients scrape the proxy, so monitoring
never multiplies into load on the masters.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hiredis

from kvstore_proxy import resp

if TYPE_CHECKING:
    from kvstore_proxy.router import Router

CACHE_SECONDS = 1.0
ASK_TIMEOUT = 1.0
INFO_REQUEST = resp.command([b"INFO", b"memory", b"persistence", b"stats", b"keyspace"])


@dataclass(frozen=True)
class GroupAnswer:
    """One group master's reply to a probe, or why there is none."""

    group: str
    address: str
    value: Any = None
    error: str | None = None

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0]


class _Probe:
    """A backend FIFO entry for the proxy's own question; never reaches a client."""

    __slots__ = ("t0", "answers", "index", "finished")
    session = None  # what the backend notifies when a reply completes: nobody

    def __init__(self, answers: list[Any], index: int, finished: asyncio.Future[None]):
        self.t0 = time.monotonic()
        self.answers = answers
        self.index = index
        self.finished = finished

    def done(self, raw: bytes | bytearray) -> None:
        try:
            value: Any = resp.parse_one(bytes(raw))
        except (resp.ProtocolError, hiredis.ProtocolError) as exc:
            value = hiredis.ReplyError(f"unreadable reply: {exc}")
        self._set(value)
        return None

    def fail(self, err: bytes) -> None:
        self._set(hiredis.ReplyError(err[1:].rstrip(b"\r\n").decode(errors="replace")))
        return None

    def _set(self, value: Any) -> None:
        if self.answers[self.index] is _WAITING:
            self.answers[self.index] = value
            if _WAITING not in self.answers and not self.finished.done():
                self.finished.set_result(None)


_WAITING = object()


async def ask_groups(router: Router, request: bytes, timeout: float = ASK_TIMEOUT) -> list[GroupAnswer]:
    """Send ``request`` to every group's master at once; their answers in group order."""
    groups = router.groups.groups if router.groups is not None else ()
    entries = router.all_backends()
    if not groups or len(entries) != len(groups):
        return [GroupAnswer(g.id, g.master, error="no route to the group") for g in groups]
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    answers: list[Any] = [_WAITING] * len(groups)
    for i, entry in enumerate(entries):
        entry.send(_Probe(answers, i, finished), request)
    try:
        await asyncio.wait_for(asyncio.shield(finished), timeout)
    except TimeoutError:
        pass
    out = []
    for g, value in zip(groups, answers, strict=True):
        if value is _WAITING:
            out.append(GroupAnswer(g.id, g.master, error=f"no reply within {timeout:g}s"))
        elif isinstance(value, hiredis.ReplyError):
            out.append(GroupAnswer(g.id, g.master, error=str(value)))
        else:
            out.append(GroupAnswer(g.id, g.master, value=value))
    answers[:] = [None] * len(answers)  # late replies find nobody waiting
    return out


class GroupInfo:
    """The masters' INFO (memory, persistence, stats, keyspace), shared by every INFO for a second."""

    def __init__(self, router: Router):
        self.router = router
        self._answers: list[GroupAnswer] = []
        self._at = -1e9
        self._version: tuple[int, int] = (-1, -1)
        self._fetching: asyncio.Future[list[GroupAnswer]] | None = None

    async def get(self) -> list[GroupAnswer]:
        version = (self.router.groups_version, self.router.slots_version)
        if time.monotonic() - self._at < CACHE_SECONDS and version == self._version:
            return self._answers
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._fetch(version))
        return await asyncio.shield(self._fetching)

    async def _fetch(self, version: tuple[int, int]) -> list[GroupAnswer]:
        try:
            answers = await ask_groups(self.router, INFO_REQUEST)
            self._answers, self._at, self._version = answers, time.monotonic(), version
            return answers
        finally:
            self._fetching = None
