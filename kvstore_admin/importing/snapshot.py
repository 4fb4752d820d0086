"""Copy the snapshot's keys from the scratch server to the groups' masters (DUMP + PEXPIRETIME, RESTORE ... ABSTTL).

Two stages overlap: while the scratch server answers the DUMPs of one SCAN batch (and the next
SCAN), the RESTOREs of the previous batch are built and sent to their groups, whose replies are
read only when a group has too many outstanding. A key whose DUMP exceeds ``big_key_bytes`` is
rebuilt with chunked commands instead (a RESTORE payload cannot exceed the target's
proto-max-bulk-len, 512 MB by default). RESTORE uses REPLACE, so copying a snapshot again over a
partial copy is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from kvstore_admin.importing.groups import GroupError, GroupLink, expect_ok
from kvstore_admin.importing.resp import Conn, ReplyError, pack
from kvstore_admin.importing.routing import Router

log = structlog.get_logger("kvstore.admin.import")

SCAN_COUNT = 1000
BIG_KEY_BYTES = 64 << 20
CHUNK = 1000  # elements per command when rebuilding a big key
STRING_CHUNK = 1 << 20
MAX_PENDING = 8 * SCAN_COUNT  # replies a group may owe before the copier waits for them


@dataclass
class CopyStats:
    keys: int = 0
    big_keys: int = 0
    bytes: int = 0
    stale_deleted: int = 0


def _restore(key: bytes, expire_at: int, payload: bytes) -> bytes:
    if expire_at > 0:
        e = b"%d" % expire_at
        return b"*6\r\n$7\r\nRESTORE\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$7\r\nREPLACE\r\n$6\r\nABSTTL\r\n" % (
            len(key), key, len(e), e, len(payload), payload)
    return b"*5\r\n$7\r\nRESTORE\r\n$%d\r\n%s\r\n$1\r\n0\r\n$%d\r\n%s\r\n$7\r\nREPLACE\r\n" % (
        len(key), key, len(payload), payload)


def dump_requests(keys: list[bytes]) -> bytes:
    """``DUMP k`` and ``PEXPIRETIME k`` for each key, as one request."""
    return b"".join(b"*2\r\n$4\r\nDUMP\r\n$%d\r\n%s\r\n*2\r\n$11\r\nPEXPIRETIME\r\n$%d\r\n%s\r\n" % (
        len(k), k, len(k), k) for k in keys)


def _scan(cursor: bytes) -> bytes:
    return pack("SCAN", cursor, "COUNT", SCAN_COUNT)


class Copier:
    """Copies database ``db`` of the scratch server into the groups."""

    def __init__(self, scratch: Conn, scratch_side: Conn, router: Router, links: list[GroupLink],
                 big_key_bytes: int = BIG_KEY_BYTES, on_progress: Callable[[CopyStats], None] | None = None):
        self.scratch = scratch  # pipelined SCAN + DUMP
        self.side = scratch_side  # big keys, read while the pipeline is busy
        self.router = router
        self.links = links
        self.big_key_bytes = big_key_bytes
        self.on_progress = on_progress
        self.stats = CopyStats()

    def copy(self) -> CopyStats:
        scratch = self.scratch
        scratch.send(_scan(b"0"))
        scan_reply = self._scan_reply(scratch.read())
        previous: tuple[list[bytes], list[Any]] | None = None
        while True:
            cursor, keys = scan_reply
            more = cursor != b"0"
            scratch.send(dump_requests(keys) + (_scan(cursor) if more else b""))
            if previous is not None:
                self._restore_batch(*previous)
            replies = scratch.read_many(2 * len(keys))
            previous = (keys, replies)
            if not more:
                break
            scan_reply = self._scan_reply(scratch.read())
        self._restore_batch(*previous)
        for link in self.links:
            link.drain()
        return self.stats

    def _scan_reply(self, reply: Any) -> tuple[bytes, list[bytes]]:
        if isinstance(reply, ReplyError) or not (isinstance(reply, list) and len(reply) == 2):
            raise GroupError(f"the scratch redis-server answered SCAN with {reply!r}")
        return reply[0], reply[1]

    def _restore_batch(self, keys: list[bytes], replies: list[Any]) -> None:
        n = len(self.links)
        out: list[bytearray] = [bytearray() for _ in range(n)]
        counts = [0] * n
        stats = self.stats
        big = self.big_key_bytes
        copied = size = 0
        for key, payload, expire_at, g in zip(keys, replies[0::2], replies[1::2], self.router.groups(keys),
                                              strict=True):
            if type(payload) is not bytes or type(expire_at) is not int:
                if payload is None:
                    continue  # expired or gone since the SCAN
                raise GroupError(f"the scratch redis-server answered DUMP/PEXPIRETIME of {key!r} with "
                                 f"{payload!r:.100} / {expire_at!r:.100}")
            if expire_at == -2:
                continue
            length = len(payload)
            if length > big:
                self._flush(out, counts)
                self._rebuild(self.links[g], key, expire_at, length)
            else:
                out[g] += _restore(key, expire_at, payload)
                counts[g] += 1
            copied += 1
            size += length
        stats.keys += copied
        stats.bytes += size
        self._flush(out, counts)
        if self.on_progress is not None:
            self.on_progress(stats)

    def _flush(self, out: list[bytearray], counts: list[int]) -> None:
        for g, link in enumerate(self.links):
            if counts[g]:
                link.drain(keep=MAX_PENDING)
                link.send(out[g], counts[g], expect_ok(link, "RESTORE of a key of the snapshot"))
                out[g] = bytearray()
                counts[g] = 0

    # --- big keys ---------------------------------------------------------------------------------

    def _rebuild(self, link: GroupLink, key: bytes, expire_at: int, size: int) -> None:
        """Recreate ``key`` in chunks read from the scratch server (streams go as one RESTORE: their consumer
        groups cannot be rebuilt with commands)."""
        side = self.side
        kind = side.call("TYPE", key)
        log.info("import_big_key", key=key.decode(errors="backslashreplace"), type=kind, bytes=size)
        self.stats.big_keys += 1
        link.drain()
        if kind == b"stream" or kind not in (b"string", b"list", b"set", b"zset", b"hash"):
            payload = side.call("DUMP", key)
            if payload is not None:
                link.send(_restore(key, max(expire_at, 0), payload), 1, expect_ok(link, f"RESTORE of {key!r}"))
            link.drain()
            return
        check = expect_ok(link, f"rebuilding the big key {key!r}")
        link.send(pack("DEL", key), 1, check)
        for command in _chunks(side, key, kind):
            link.send(command, 1, check)
            link.drain(keep=64)
        if expire_at > 0:
            link.send(pack("PEXPIREAT", key, expire_at), 1, check)
        link.drain()

    # --- after a resync: keys the source no longer has ------------------------------------------------

    def drop_stale(self) -> int:
        """Delete from the groups the keys the snapshot does not hold (left by an earlier, interrupted copy), and
        copies left in a group that no longer owns their slot (slot owners changed between two runs)."""
        deleted = 0
        group = self.router.group
        for g, link in enumerate(self.links):
            link.drain()
            cursor = b"0"
            while True:
                cursor, keys = link.call("SCAN", cursor, "COUNT", SCAN_COUNT)
                if keys:
                    exists = self.side.call_many([("EXISTS", k) for k in keys])
                    gone = [k for k, e in zip(keys, exists, strict=True) if e == 0 or group(k) != g]
                    if gone:
                        deleted += int(link.call("UNLINK", *gone))
                if cursor == b"0":
                    break
        self.stats.stale_deleted = deleted
        return deleted


def _chunks(side: Conn, key: bytes, kind: bytes):  # type: ignore[no-untyped-def]
    """Commands that rebuild ``key`` (of type ``kind``) from the scratch server, a chunk at a time."""
    if kind == b"string":
        length = int(side.call("STRLEN", key))
        for start in range(0, length, STRING_CHUNK):
            yield pack("APPEND", key, side.call("GETRANGE", key, start, start + STRING_CHUNK - 1))
    elif kind == b"list":
        length = int(side.call("LLEN", key))
        for start in range(0, length, CHUNK):
            items = side.call("LRANGE", key, start, start + CHUNK - 1)
            if items:
                yield pack("RPUSH", key, *items)
    elif kind == b"zset":
        length = int(side.call("ZCARD", key))
        for start in range(0, length, CHUNK):
            flat = side.call("ZRANGE", key, start, start + CHUNK - 1, "WITHSCORES")
            pairs = [x for i in range(0, len(flat), 2) for x in (flat[i + 1], flat[i])]
            if pairs:
                yield pack("ZADD", key, *pairs)
    else:
        scan, add = (b"SSCAN", b"SADD") if kind == b"set" else (b"HSCAN", b"HSET")
        cursor = b"0"
        while True:
            cursor, items = side.call(scan, key, cursor, "COUNT", CHUNK)
            if items:
                yield pack(add, key, *items)
            if cursor == b"0":
                break
