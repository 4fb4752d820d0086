"""RSS per idle client connection: hold N connections to a proxy and watch its RSS.

A connect() completes in the kernel before the proxy accept()s it, so "connected" is decided by
the proxy's own fd count growing by N, not by our side. Then each connection does one PING
round trip (a real client's connection has done at least that: HELLO, AUTH or SELECT) and RSS is
read again; that second figure is the headline one. Connections are opened and pinged in batches
so neither proxy's accept backlog overflows (an overflowed SYN costs a 1 s retransmit, not RSS).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time

from bench.cluster import PING, ProcTree
from bench.report import IdleResult

BATCH = 500
SETTLE_S = 1.0


def raise_nofile(wanted: int) -> int:
    """Raise our soft RLIMIT_NOFILE toward ``wanted`` (up to the hard limit); return the new soft limit.

    Called before any proxy starts, so the proxies inherit it too.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        return new
    return soft


async def _open(port: int, n: int, conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> str | None:
    for lo in range(0, n, BATCH):
        batch = await asyncio.gather(
            *(asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10) for _ in range(min(BATCH, n - lo))),
            return_exceptions=True,
        )
        for c in batch:
            if isinstance(c, BaseException):
                return f"connect failed after {len(conns)} connections: {type(c).__name__}: {c}"
            conns.append(c)
    return None


async def _ping(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> tuple[int, str | None]:
    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(PING)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)

    ok, first_bad = 0, None
    for lo in range(0, len(conns), BATCH):
        replies = await asyncio.gather(*(one(r, w) for r, w in conns[lo:lo + BATCH]), return_exceptions=True)
        for rep in replies:
            if rep == b"+PONG\r\n":
                ok += 1
            elif first_bad is None:
                first_bad = repr(rep)[:120]
    return ok, first_bad


async def _wait_fds(tree: ProcTree, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = tree.num_fds()
        if n >= at_least or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.1)


async def measure(target: str, port: int, tree: ProcTree, n: int) -> IdleResult:
    res = IdleResult(target=target, requested=n)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    await asyncio.sleep(SETTLE_S)
    base_fds = tree.num_fds()
    try:
        res.rss_before = tree.rss()
        err = await _open(port, n, conns)
        fds = await _wait_fds(tree, base_fds + len(conns), 30)
        res.accepted = min(len(conns), max(0, fds - base_fds))
        await asyncio.sleep(SETTLE_S)
        res.rss_connected = tree.rss()
        res.answered, bad = await _ping(conns)
        await asyncio.sleep(SETTLE_S)
        res.rss_after_ping = tree.rss()
        problems = [err] if err else []
        if bad is not None:
            problems.append(f"{len(conns) - res.answered} PINGs not answered +PONG, e.g. {bad}")
        if res.accepted < len(conns):
            problems.append(f"proxy accepted only {res.accepted} of {len(conns)}")
        res.error = "; ".join(problems) or None
    finally:
        for _, w in conns:
            with contextlib.suppress(Exception):
                w.close()
        # let the proxy see the closes before the next measurement starts
        deadline = time.monotonic() + 30
        while tree.num_fds() > base_fds + 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    return res


def run(target: str, port: int, tree: ProcTree, n: int) -> IdleResult:
    try:
        return asyncio.run(measure(target, port, tree, n))
    except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
        return IdleResult(target=target, requested=n, error=f"{type(exc).__name__}: {exc}")
