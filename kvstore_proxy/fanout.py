"""Commands sent to every group (or any one) and merged: DBSIZE, FLUSH*, KEYS, SCAN, RANDOMKEY, COMMAND."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvstore_proxy import resp
from kvstore_proxy.datapath import CommandStat, Reply
from kvstore_proxy.split_reply import Part, SplitReply

if TYPE_CHECKING:
    from kvstore_proxy.session import Session

_NO_GROUPS = resp.error("CLUSTERDOWN the cluster has no groups")


def fan_out(s: Session, stat: CommandStat, args: list[bytes], t0: float,
            requests: list[tuple[Any, bytes]], merge: Callable[[list[Any]], bytes]) -> bytes | None:
    """Queue one SplitReply and send each ``(backend, request)``; ``merge`` builds the answer."""
    if not requests:
        return _NO_GROUPS
    parent = SplitReply(s, t0, stat, args, len(requests), merge)
    s.fifo.append(parent)
    for i, (backend, raw) in enumerate(requests):
        backend.send(Part(parent, i), raw)
    return None


def _broadcast(s: Session, args: list[bytes], stat: CommandStat, t0: float,
               merge: Callable[[list[Any]], bytes]) -> bytes | None:
    raw = resp.command(args)
    return fan_out(s, stat, args, t0, [(b, raw) for b in s.router.all_backends()], merge)


def _any(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> None:
    """Static answers (COMMAND INFO/DOCS/...): any group's master knows them."""
    r = Reply(s, t0, stat, args)
    s.fifo.append(r)
    s.router.any_backend().send(r, resp.command(args))


def _dbsize(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    return _broadcast(s, args, stat, t0, lambda results: resp.integer(sum(results)))


def _ok(results: list[Any]) -> bytes:
    return resp.OK


def _flush(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    return _broadcast(s, args, stat, t0, _ok)


def _keys(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    router = s.router
    slot = s.worker.router.slotter.key_slot

    def merge(results: list[Any]) -> bytes:
        out: list[bytes] = []
        for gi, keys in enumerate(results):
            out.extend(k for k in keys if router.owns(gi, slot(k)))
        return resp.array([resp.bulk(k) for k in out])

    return _broadcast(s, args, stat, t0, merge)


def _randomkey(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    def merge(results: list[Any]) -> bytes:
        found = [k for k in results if k is not None]
        return resp.bulk(random.choice(found)) if found else s.enc.null

    return _broadcast(s, args, stat, t0, merge)


def _scan(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    """SCAN over every group in turn: cursor = backend_cursor * ngroups + group_index."""
    backends = s.router.all_backends()
    n = len(backends)
    if n == 0:
        return _NO_GROUPS
    try:
        cursor = int(args[1])
        if cursor < 0:
            raise ValueError
    except ValueError:
        return resp.error("ERR invalid cursor")
    group, inner = cursor % n, cursor // n
    router = s.router
    slot = s.worker.router.slotter.key_slot

    def merge(results: list[Any]) -> bytes:
        next_inner, keys = results[0]
        next_inner = int(next_inner)
        if next_inner:
            nxt = next_inner * n + group
        else:
            nxt = group + 1 if group + 1 < n else 0
        # Only keys this group serves: a node may still hold keys of slots it gave away.
        keys = [k for k in keys if router.owns(group, slot(k))]
        return resp.array([resp.bulk(b"%d" % nxt), resp.array([resp.bulk(k) for k in keys])])

    sub = [args[0], b"%d" % inner, *args[2:]]
    return fan_out(s, stat, args, t0, [(backends[group], resp.command(sub))], merge)


HANDLERS: dict[bytes, Callable[..., bytes | None]] = {
    b"dbsize": _dbsize, b"flushdb": _flush, b"flushall": _flush, b"keys": _keys,
    b"randomkey": _randomkey, b"scan": _scan,
    b"command": _any, b"command|info": _any, b"command|docs": _any, b"command|list": _any,
    b"command|getkeys": _any, b"command|getkeysandflags": _any,
}
