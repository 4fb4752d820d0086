"""Moving one big key in pieces, so that neither server stalls for more than a few milliseconds at a time.

::

    source: LOCK (a field of kvstore:moving in db 14; proxies' takes now leave the key in place
            and hold its requests) ─► read it a chunk at a time (HSCAN, SSCAN, ZRANGE, LRANGE, GETRANGE)
    target: db 13: DEL, then HSET/SADD/ZADD/RPUSH/APPEND per chunk, PEXPIREAT ─► MOVE key 0 (atomic)
    source: RELEASE = UNLINK (freed in the background) + drop the lock, atomic

While locked, nobody writes the key (every proxy holds its requests), so the copy is exact; the
target shows it in database 0 only once complete, and the source drops it only after that. A
mover killed part-way leaves the lock: the next run finds it (``LOCKED``) and either finishes
(the key is already in the target's database 0: only our MOVE puts it there) or copies again.
Streams go as one RESTORE (their consumer groups cannot be rebuilt with commands).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import structlog

from kvstore_cluster.keymove import COPY_DB, LOCK, RELEASE
from kvstore_cluster.node import Node
from kvstore_cluster.ops.context import crash_point
from kvstore_cluster.ops.errors import MoveError

log = structlog.get_logger("kvstore.ops.big_keys")

CHUNK = 1000  # elements per read and write (a few milliseconds on either server)
STRING_CHUNK = 1 << 20


class Stalls:
    """The longest single command the mover ran (an upper bound of how long it blocked a server)."""

    def __init__(self) -> None:
        self.longest = 0.0

    async def timed(self, node: Node, commands: list[tuple[Any, ...]], what: str,
                    timeout: float | None = None) -> list[Any]:
        began = time.monotonic()
        replies = await node.pipeline(commands, timeout, what)
        took = (time.monotonic() - began) / max(1, len(commands))
        if took > self.longest:
            self.longest = took
        return replies


async def _chunks(source: Node, key: bytes, kind: bytes, stalls: Stalls) -> AsyncIterator[tuple[Any, ...]]:
    """Commands that rebuild ``key`` (of type ``kind``) on the target, one chunk at a time."""
    if kind == b"string":
        length = int(await source.call("STRLEN", key))
        for start in range(0, length, STRING_CHUNK):
            part, = await stalls.timed(source, [("GETRANGE", key, start, start + STRING_CHUNK - 1)], "GETRANGE")
            yield ("APPEND", key, part)
    elif kind == b"list":
        length = int(await source.call("LLEN", key))
        for start in range(0, length, CHUNK):
            items, = await stalls.timed(source, [("LRANGE", key, start, start + CHUNK - 1)], "LRANGE")
            if items:
                yield ("RPUSH", key, *items)
    elif kind == b"zset":
        length = int(await source.call("ZCARD", key))
        for start in range(0, length, CHUNK):
            flat, = await stalls.timed(source, [("ZRANGE", key, start, start + CHUNK - 1, "WITHSCORES")], "ZRANGE")
            if flat:
                yield ("ZADD", key, *[x for i in range(0, len(flat), 2) for x in (flat[i + 1], flat[i])])
    else:
        scan, add = ("SSCAN", "SADD") if kind == b"set" else ("HSCAN", "HSET")
        cursor = b"0"
        while True:
            (cursor, items), = await stalls.timed(source, [(scan, key, cursor, "COUNT", CHUNK)], scan)
            if items:
                yield (add, key, *items)
            if cursor == b"0":
                return


async def move(source: Node, target: Node, key: bytes, stalls: Stalls, resuming: bool = False) -> int:
    """Move ``key`` from ``source`` to ``target`` in pieces; returns 1 if it moved, 0 if it was gone.

    ``resuming``: the key is locked already (by a mover that died); finish what it started.
    """
    shown = key.decode(errors="backslashreplace")
    if resuming and (await target.call("EXISTS", key)):
        # Only our MOVE puts a locked key into the target's database 0: that copy is complete.
        await source.call("EVAL", RELEASE, 1, key, what="EVAL release")
        log.info("big_key_finished", key=shown)
        return 1
    if await target.call("EXISTS", key):
        raise MoveError(f"the target {target.address} already holds the big key {shown!r} (BUSYKEY). Nothing was "
                        "overwritten. Decide which copy is right, delete the other, then run 'kvstore-admin reshard "
                        "--resume'")
    began = time.monotonic()
    locked = await stalls.timed(source, [("EVAL", LOCK, 1, key, target.address)], "EVAL lock")
    if not locked[0]:
        return 0  # expired or deleted before we got to it
    kind, expire_at = locked[0]
    if kind == b"stream":
        payload = await source.call("DUMP", key, timeout=60.0)
        copy = [("RESTORE", key, max(0, expire_at), payload, *(("ABSTTL",) if expire_at > 0 else ()))]
        await stalls.timed(target, [("SELECT", COPY_DB), ("DEL", key), *copy, ("SELECT", 0)], "RESTORE", 60.0)
    else:
        await target.pipeline([("SELECT", COPY_DB), ("DEL", key), ("SELECT", 0)], what="DEL")
        elements = 0
        async for command in _chunks(source, key, kind, stalls):
            # Every write re-selects the copy database: a reconnected connection starts in database 0.
            await stalls.timed(target, [("SELECT", COPY_DB), command, ("SELECT", 0)], str(command[0]))
            crash_point("piece")
            elements += len(command) - 2
        if expire_at > 0:
            await target.pipeline([("SELECT", COPY_DB), ("PEXPIREAT", key, expire_at), ("SELECT", 0)],
                                  what="PEXPIREAT")
    if 0 < expire_at <= time.time() * 1000:
        # It expired while we copied it (on the source too): it is gone, not moved.
        await target.pipeline([("SELECT", COPY_DB), ("DEL", key), ("SELECT", 0)], what="DEL")
        await source.call("EVAL", RELEASE, 1, key, what="EVAL release")
        return 0
    replies = await target.pipeline([("SELECT", COPY_DB), ("MOVE", key, 0), ("SELECT", 0)], what="MOVE")
    if replies[1] != 1:
        raise MoveError(f"the target {target.address} already holds the big key {shown!r} (BUSYKEY); the complete "
                        f"copy stays in its database {COPY_DB}. Decide which is right, then run 'kvstore-admin "
                        "reshard --resume'")
    await source.call("EVAL", RELEASE, 1, key, what="EVAL release")
    log.info("big_key_moved", key=shown, type=kind.decode(), seconds=round(time.monotonic() - began, 3))
    return 1
