"""Multi-key commands (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH): split by group, merge the replies."""

from __future__ import annotations

from binascii import crc_hqx
from typing import TYPE_CHECKING, Any

import hiredis

from kvstore_proxy import resp
from kvstore_proxy.commands import CommandSpec, Merge
from kvstore_proxy.request import CommandStat, Part, Reply, SplitReply

if TYPE_CHECKING:
    from kvstore_proxy.session import Session


def dispatch(session: Session, spec: CommandSpec, stat: CommandStat, args: list[bytes], raw: bytes,
             t0: float) -> None:
    """Send ``args`` whole when every key is on one backend, else one sub-request per backend."""
    slot_backend = session.router.slot_backend
    step = spec.step
    by: dict[Any, list[int]] = {}
    for i in range(1, len(args), step):
        key = args[i]
        if 123 in key:  # '{'
            s = key.find(b"{")
            e = key.find(b"}", s + 1)
            if e > s + 1:
                key = key[s + 1 : e]
        b = slot_backend[crc_hqx(key, 0) & 0x3FFF]
        positions = by.get(b)
        if positions is None:
            by[b] = [i]
        else:
            positions.append(i)
    if len(by) == 1:
        r = Reply(session, t0, stat, args)
        session.fifo.append(r)
        next(iter(by)).send(r, raw)
        return
    parts = list(by.items())
    merge = _merger(spec.merge, parts, len(args) - 1, session.enc)
    parent = SplitReply(session, t0, stat, args, len(parts), merge)
    session.fifo.append(parent)
    name = args[0]
    for index, (backend, positions) in enumerate(parts):
        sub = [name]
        if step == 1:
            sub.extend([args[i] for i in positions])
        else:
            for i in positions:
                sub.extend(args[i : i + step])
        backend.send(Part(parent, index), resp.command(sub))


def _merger(merge: Merge | None, parts: list[tuple[Any, list[int]]], nargs: int,  # type: ignore[no-untyped-def]
            enc: resp.Resp2):
    if merge is Merge.ORDERED:
        bulk_array = enc.bulk_array  # missing keys: $-1 in RESP2, _ in RESP3 (as hiredis read either)

        def ordered(results: list[Any]) -> bytes:
            values: list[Any] = [None] * (nargs + 1)
            for (_, positions), got in zip(parts, results, strict=True):
                if got.__class__ is not list or len(got) != len(positions):
                    raise ValueError(f"expected {len(positions)} values from a group, got {got!r:.80}")
                for i, v in zip(positions, got, strict=False):  # lengths checked above
                    values[i] = v
            del values[0]
            if None in values:
                return bulk_array(values)
            return hiredis.pack_command(tuple(values))  # no nulls: an array of bulk strings, in C
        return ordered
    if merge is Merge.SUM:
        def summed(results: list[Any]) -> bytes:
            return resp.integer(sum(results))
        return summed

    def all_ok(results: list[Any]) -> bytes:
        return resp.OK
    return all_ok
