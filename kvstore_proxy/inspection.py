"""The commands tools inspect a server with, answered for the whole proxy: INFO, MONITOR, LATENCY,
MEMORY STATS/DOCTOR, LASTSAVE."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import structlog

from kvstore_proxy import aggregate, fanout, info, latency, resp, siblings
from kvstore_proxy.datapath import CommandStat, Reply, notify

if TYPE_CHECKING:
    from kvstore_proxy.server import Worker
    from kvstore_proxy.session import Session

log = structlog.get_logger("kvstore.proxy.inspection")


def complete(r: Reply, data: bytes) -> None:
    """``r``, queued earlier, gets its reply now; its session writes it in turn this loop iteration."""
    if r.data is None:
        r.data = data
        notify(r, r.session.outbox)


def answer_later(s: Session, stat: CommandStat, args: list[bytes], t0: float,
                 work: Coroutine[Any, Any, bytes]) -> None:
    """Queue ``args``'s reply now (it keeps its place in the pipeline) and fill it when ``work`` ends."""
    r = Reply(s, t0, stat, args)
    s.fifo.append(r)
    tasks = s.worker.tasks
    task = s.worker.loop.create_task(work)
    tasks.add(task)

    def finished(t: asyncio.Task[bytes]) -> None:
        tasks.discard(t)
        try:
            data = t.result()
        except Exception as exc:  # noqa: BLE001 - the client gets an error, the worker keeps serving
            log.exception("inspection_failed", command=stat.name, error=str(exc))
            data = resp.error(f"ERR kvstore-proxy could not answer {stat.name.upper()}: {exc}")
        complete(r, data)

    task.add_done_callback(finished)


async def proxy_figures(w: Worker) -> info.ProxyFigures:
    """This worker's snapshot and every sibling's (those that answer)."""
    figures = info.ProxyFigures([info.worker_snapshot(w)])
    if w.family.siblings():
        for index, raw in sorted((await siblings.ask(w.family, b"stats")).items()):
            snap = info.parse_snapshot(raw)
            if snap is None:
                figures.missing.append(index)
            else:
                figures.snaps.append(snap)
    return figures


# --- INFO -------------------------------------------------------------------------------------------------


def _info(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    w = s.worker
    sections = info.select(args[1:])
    groups = any(x in info.FROM_GROUPS for x in sections)
    workers = bool(w.family.siblings()) and any(x in info.FROM_WORKERS for x in sections)
    if not groups and not workers:
        view = info.View(w, info.ProxyFigures([info.worker_snapshot(w)]), [])
        return s.enc.verbatim(info.render(view, sections))

    async def build() -> bytes:
        answers = await w.group_info.get() if groups else []
        figures = await proxy_figures(w) if workers else info.ProxyFigures([info.worker_snapshot(w)])
        return s.enc.verbatim(info.render(info.View(w, figures, answers), sections))

    answer_later(s, stat, args, t0, build())
    return None


# --- MONITOR ----------------------------------------------------------------------------------------------


def _monitor(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> None:
    r = Reply(s, t0, stat, args)
    s.fifo.append(r)
    s.worker.monitor.attach(s, r)


# --- LATENCY ----------------------------------------------------------------------------------------------


def _latency_latest(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> None:
    async def build() -> bytes:
        events = (await proxy_figures(s.worker)).events()
        return resp.array([resp.array([resp.bulk(name.encode()), resp.integer(ts), resp.integer(ms),
                                       resp.integer(worst)])
                           for name, ts, ms, worst in events.latest()])

    answer_later(s, stat, args, t0, build())


def _latency_history(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> None:
    event = args[2].decode(errors="replace")

    async def build() -> bytes:
        events = (await proxy_figures(s.worker)).events()
        return resp.array([resp.array([resp.integer(ts), resp.integer(ms)]) for ts, ms in events.history(event)])

    answer_later(s, stat, args, t0, build())


def reset_events(w: Worker, names: list[str] | None) -> list[str]:
    """Forget latency events in this worker; the names of those it had."""
    had = [n for n in w.slowlog.events.events if names is None or n in names]
    w.slowlog.events.reset(names)
    return had


def _latency_reset(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    w = s.worker
    names = [a.decode(errors="replace") for a in args[2:]] or None
    had = set(reset_events(w, names))
    if not w.family.siblings():
        return resp.integer(len(had))

    async def build() -> bytes:
        # Only events a worker can have: the request line stays short whatever the client sent.
        known = None if names is None else [n for n in latency.EVENTS if n in names]
        request = b"latency-reset " + json.dumps(known).encode()
        for raw in (await siblings.ask(w.family, request)).values():
            try:
                theirs = json.loads(raw or b"[]")
            except ValueError:
                continue
            if isinstance(theirs, list):
                had.update(n for n in theirs if isinstance(n, str))
        return resp.integer(len(had))

    answer_later(s, stat, args, t0, build())
    return None


def _latency_histogram(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> None:
    wanted = [a.decode(errors="replace").lower() for a in args[2:]]

    async def build() -> bytes:
        hist = (await proxy_figures(s.worker)).histograms()
        if hist is None:
            return s.enc.map([])
        names = [n for n in (wanted or sorted(hist.commands)) if n in hist.commands and not n.startswith("(")]
        out = []
        for name in dict.fromkeys(names):
            calls, buckets = hist.cumulative(name)
            out.append((resp.bulk(name.encode()), s.enc.map([
                (resp.bulk(b"calls"), resp.integer(calls)),
                (resp.bulk(b"histogram_usec"), s.enc.map([(resp.integer(b), resp.integer(n)) for b, n in buckets])),
            ])))
        return s.enc.map(out)

    answer_later(s, stat, args, t0, build())


# --- MEMORY STATS / DOCTOR, LASTSAVE (every group's master, combined) -----------------------------------


def _memory_stats(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    enc = s.enc

    def encode(value: Any) -> bytes:
        if isinstance(value, list):
            return enc.map([(resp.bulk(k.encode()), encode(v)) for k, v in value])
        if isinstance(value, float):
            return enc.double(value)
        return resp.integer(int(value))

    def merge(results: list[Any]) -> bytes:
        return encode(aggregate.merge_memory_stats(results))

    return fanout._broadcast(s, args, stat, t0, merge)


def _memory_doctor(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    groups = s.router.groups.groups if s.router.groups is not None else ()

    def merge(results: list[Any]) -> bytes:
        parts = []
        for g, text in zip(groups, results, strict=False):
            body = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
            parts.append(f"group {g.id} ({g.master}): {body.strip()}")
        return s.enc.verbatim("\n\n".join(parts).encode() + b"\n")

    return fanout._broadcast(s, args, stat, t0, merge)


def _lastsave(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    return fanout._broadcast(s, args, stat, t0, lambda results: resp.integer(min(results)))


HANDLERS = {
    b"info": _info, b"monitor": _monitor,
    b"latency|latest": _latency_latest, b"latency|history": _latency_history,
    b"latency|reset": _latency_reset, b"latency|histogram": _latency_histogram,
    b"memory|stats": _memory_stats, b"memory|doctor": _memory_doctor, b"lastsave": _lastsave,
}
