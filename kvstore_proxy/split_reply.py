"""Requests answered from several backend replies merged in Python: the fan-out commands (fanout.py).

The per-request types (Reply, CommandStat, and MGET/MSET/DEL's split MultiReply) are compiled, in
datapath.pyx; this is the slow path's split, for commands answered rarely.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hiredis

from kvstore_proxy import resp
from kvstore_proxy.datapath import CommandStat, Reply

Merge = Callable[[list[Any]], bytes]


class SplitReply(Reply):
    """A request answered from several backend replies, merged by ``merge`` once all arrived."""

    __slots__ = ("results", "left", "merge")

    def __init__(self, session: Any, t0: float, stat: CommandStat, args: list[bytes], nparts: int, merge: Merge):
        Reply.__init__(self, session, t0, stat, args)
        self.results: list[Any] = [None] * nparts
        self.left = nparts
        self.merge = merge

    def part_done(self, index: int, value: Any) -> Reply | None:
        self.results[index] = value
        self.left -= 1
        if self.left:
            return None
        if self.data is None:
            for value in self.results:
                if isinstance(value, hiredis.ReplyError):
                    self.data = resp.error(str(value))
                    return self
            try:
                self.data = self.merge(self.results)
            except Exception as exc:  # noqa: BLE001 - a surprising backend reply must not kill the loop
                self.data = resp.error(f"ERR kvstore could not merge replies: {exc}")
        return self


class Part:
    """One backend's share of a split request; forwards its parsed reply to the parent."""

    __slots__ = ("parent", "index", "t0")

    def __init__(self, parent: SplitReply, index: int):
        self.parent = parent
        self.index = index
        self.t0 = parent.t0

    @property
    def session(self) -> Any:
        return self.parent.session

    def done(self, raw: bytes | bytearray) -> Reply | None:
        # The backend scanner bounded raw already; the common one-line replies need no reader.
        c = raw[0]
        if c == 43 and raw == b"+OK\r\n":  # MSET
            return self.parent.part_done(self.index, b"OK")
        if c == 58:  # DEL, EXISTS, TOUCH, UNLINK
            try:
                return self.parent.part_done(self.index, int(raw[1:-2]))
            except ValueError:
                pass
        try:
            value = resp.parse_one(bytes(raw))
        except (resp.ProtocolError, hiredis.ProtocolError) as exc:
            value = hiredis.ReplyError(f"ERR kvstore could not parse a backend reply: {exc}")
        return self.parent.part_done(self.index, value)

    def fail(self, err: bytes) -> Reply | None:
        text = err[1:].rstrip(b"\r\n").decode(errors="replace")
        return self.parent.part_done(self.index, hiredis.ReplyError(text))
