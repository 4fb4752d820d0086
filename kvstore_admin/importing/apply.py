"""Apply the source's replication stream to the groups, each command exactly once.

Commands are parsed with their exact bytes and the stream offset just after each one, routed by
key to their group and sent in batches, one ``MULTI ... EXEC`` per group per batch that also
sets the group's marker to the offset the batch reaches (:mod:`groups`). A resumed import
continues the stream from the lowest marker and skips, per group, the commands at or below that
group's marker: nothing is applied twice, nothing is skipped.

A batch never ends inside a transaction of the source, so what the source ran atomically on keys
of one group is applied atomically there too. Commands whose keys live in several groups:

- ``DEL``/``UNLINK``/``MSET``/``MSETNX`` are split by group (their parts do not depend on each other);
- any other (``RENAME``, ``SMOVE``, ``LMOVE``, ``*STORE``, ``COPY``, ``BITOP``, ...) runs on every group
  that holds one of its written keys, with the other groups' keys copied in for the duration
  of that group's transaction and deleted before it ends. The group receiving data (its key is
  flagged OW/INSERT/UPDATE) goes first, while the keys it reads are still as the command found
  them on the source; a group holding only keys the command removes from goes after, since what
  happens to its keys does not depend on the others. So a crash between the two leaves a state
  the resumed import completes correctly.

Database handling: commands of other databases than the one imported are skipped; ``FLUSHALL`` and
``FLUSHDB`` empty the groups; ``MOVE``/``COPY ... DB`` out of the database are a delete / nothing;
a key moved *into* it, or ``SWAPDB`` with it, cannot be followed (the stream does not carry the
value) and stops the import with a message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat

import hiredis
import structlog

from kvstore_admin.errors import NODE_FAILED, AdminError
from kvstore_admin.importing.groups import EXEC, MULTI, GroupLink, Marker, expect_exec, marker_commands
from kvstore_admin.importing.resp import ProtocolError, ReplyError, pack
from kvstore_admin.importing.routing import CommandTable, Router, UnknownCommand
from kvstore_admin.importing.testhooks import crash_point

log = structlog.get_logger("kvstore.admin.import")

BATCH_COMMANDS = 2000
BATCH_BYTES = 4 << 20
MAX_BATCH_IN_MULTI = 100_000  # a source transaction longer than this is not applied atomically per group
BATCH_SECONDS = 0.005  # a batch waits at most this long for more commands
HEARTBEAT_SECONDS = 1.0  # markers of idle groups move forward this often (shorter resumes)
MAX_OUTSTANDING = 20_000  # replies a group may owe before the applier waits for them
SPLITTABLE = {b"del": 1, b"unlink": 1, b"mset": 2, b"msetnx": 2}  # name -> key stride
RECEIVING_FLAGS = {b"OW", b"ow", b"insert", b"INSERT", b"update", b"UPDATE"}
IGNORED = {b"ping", b"replconf", b"publish", b"spublish"}
BROADCAST = {b"function", b"script"}
ERROR_EXAMPLES = 5


class StreamError(AdminError):
    """The stream holds something the import cannot apply faithfully; it stops (state kept)."""

    code = NODE_FAILED


@dataclass
class ApplyStats:
    commands: int = 0  # commands of the imported database sent to the groups
    skipped_resume: int = 0  # commands already applied before a resume
    batches: int = 0
    errors: int = 0  # commands the cluster refused while the source had run them
    error_examples: list[str] = field(default_factory=list)
    unsupported: dict[str, int] = field(default_factory=dict)  # command name -> times skipped


_FRAMING = [len(b"$%d\r\n\r\n" % n) for n in range(4096)]  # bytes RESP adds around a bulk of length n


def _frame_sizes(lens: list[int]) -> int:
    try:
        return sum(map(_FRAMING.__getitem__, lens))
    except IndexError:
        return sum(len(b"$%d\r\n\r\n" % n) for n in lens)


class StreamParser:
    """The commands of the raw stream, each with its exact bytes and the offset just after it."""

    def __init__(self, offset: int):
        self.reader = hiredis.Reader(protocolError=ProtocolError, replyError=ReplyError)
        self.buf = bytearray()
        self.pos = 0
        self.offset = offset  # stream offset of buf[pos]

    def feed(self, data: bytes) -> None:
        self.reader.feed(data)
        self.buf += data

    def next(self) -> tuple[list[bytes], bytes, int] | None:
        try:
            cmd = self.reader.gets()
        except ProtocolError as exc:
            raise StreamError(f"the source sent garbage in its replication stream near offset {self.offset} "
                              f"({exc}); the import stopped") from None
        if cmd is False:
            if self.pos > (1 << 20):
                del self.buf[: self.pos]
                self.pos = 0
            return None
        if type(cmd) is not list or not cmd or not all(map(isinstance, cmd, repeat(bytes))):
            raise StreamError(f"the source sent {cmd!r:.80} in its replication stream at offset {self.offset}, "
                              "not a command; the import stopped")
        lens = list(map(len, cmd))
        size = _frame_sizes([len(cmd)]) - 2 + sum(lens) + _frame_sizes(lens)  # "*n\r\n" is "$n\r\n\r\n" - 2
        raw = bytes(self.buf[self.pos : self.pos + size])
        if raw[:1] != b"*" or raw[-2:] != b"\r\n":
            raise StreamError(f"the source's replication stream is not in canonical RESP at offset {self.offset}; "
                              "the import stopped")
        self.pos += size
        self.offset += size
        return cmd, raw, self.offset


class Applier:
    """Routes parsed commands into per-group batches and sends them with markers."""

    def __init__(self, router: Router, links: list[GroupLink], table: CommandTable, control: GroupLink,
                 db: int, replid: str, offset: int, selected: int, skip: list[int] | None = None):
        self.router = router
        self.links = links
        self.table = table
        self.control = control  # COMMAND GETKEYSANDFLAGS, on its own connection
        self.db = db
        self.replid = replid
        self.parser = StreamParser(offset)
        # The source database the stream has selected; like a replica's master client, database 0 until
        # told otherwise (-1: the snapshot did not say).
        self.selected = max(selected, 0)
        self.in_multi = False
        self.skip = skip or [0] * len(links)  # per group: commands ending at or below this were applied
        self.out: list[bytearray] = [bytearray() for _ in links]
        self.counts = [0] * len(links)
        self.buffered = 0
        self.batch_started = 0.0
        self.last_heartbeat = time.monotonic()
        self.offset = offset  # every command up to here is routed: in a batch, sent or applied
        self.applied = offset  # every command up to here is confirmed by every group
        self.sent = offset  # every command up to here has been sent
        self.stats = ApplyStats()
        self.handlers: dict[bytes, Callable[[list[bytes], bytes, int], None]] = {
            b"select": self._select, b"multi": self._multi, b"exec": self._exec,
            b"flushall": self._flush_all, b"flushdb": self._flush_db, b"swapdb": self._swapdb,
            b"move": self._move, b"copy": self._copy,
        }

    # --- feeding -----------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        parser = self.parser
        parser.feed(data)
        handle = self.handle
        while True:
            item = parser.next()
            if item is None:
                return
            handle(*item)
            # Only now is the command in a batch (or applied): a marker may cover it from here on.
            self.offset = item[2]
            if self.buffered >= BATCH_COMMANDS and (not self.in_multi or self.buffered >= MAX_BATCH_IN_MULTI):
                self.flush()  # a huge source transaction is cut: its commands still apply in order

    def handle(self, args: list[bytes], raw: bytes, end: int) -> None:
        name = args[0].lower()
        special = self.handlers.get(name)
        if special is not None:
            special(args, raw, end)
            return
        if self.selected != self.db or name in IGNORED:
            return
        if name in BROADCAST:
            for g in range(len(self.links)):
                self._add(g, raw, end)
            return
        try:
            keys = self.table.keys(name, args)
        except UnknownCommand as exc:
            self._unsupported(str(exc), "the cluster's Redis does not know it")
            return
        if keys is None:
            self._keyed(args, raw, end, self._keys_and_flags(args))
            return
        if len(keys) == 1:
            g = self.router.group(keys[0])
            if end > self.skip[g]:
                self._add(g, raw, end)
            else:
                self.stats.skipped_resume += 1
            return
        if not keys:
            self._unsupported(name.decode(errors="replace"), "a write without keys the import does not know")
            return
        self._keyed(args, raw, end, None, keys)

    def _add(self, g: int, raw: bytes, end: int) -> None:
        if end <= self.skip[g]:
            self.stats.skipped_resume += 1
            return
        if not self.buffered:
            self.batch_started = time.monotonic()
        self.out[g] += raw
        self.counts[g] += 1
        self.buffered += 1
        self.stats.commands += 1

    def _keyed(self, args: list[bytes], raw: bytes, end: int, keys_flags: list[tuple[bytes, list[bytes]]] | None,
               keys: list[bytes] | None = None) -> None:
        group = self.router.group
        if keys is None:
            assert keys_flags is not None
            keys = [k for k, _ in keys_flags]
        if not keys:
            self._unsupported(args[0].decode(errors="replace"), "a write without keys the import does not know")
            return
        name = args[0].lower()
        if name == b"sort" and _sort_patterns(args):
            # BY/GET patterns read keys the command does not declare: they count as keys it reads.
            self.sync()
            read = [(k, [b"RO"]) for k in self._pattern_keys(args)]
            keys_flags = (keys_flags if keys_flags is not None else self._keys_and_flags(args)) + read
            keys = keys + [k for k, _ in read]
        groups = {group(k) for k in keys}
        if len(groups) == 1:
            self._add(groups.pop(), raw, end)
            return
        stride = SPLITTABLE.get(name)
        if stride is not None:
            parts: dict[int, list[bytes]] = {}
            for i in range(1, len(args), stride):
                parts.setdefault(group(args[i]), []).extend(args[i : i + stride])
            verb = b"MSET" if stride == 2 else args[0]  # an MSETNX the source ran set every key
            for g, part in parts.items():
                self._add(g, pack(verb, *part), end)
            return
        self._cross(args, raw, end, keys_flags if keys_flags is not None else self._keys_and_flags(args))

    def _pattern_keys(self, args: list[bytes]) -> list[bytes]:
        """The keys SORT's BY/GET patterns name for the elements of the sorted key (as it is now, before)."""
        link = self.links[self.router.group(args[1])]
        kind = link.call("TYPE", args[1])
        fetch = {b"list": ("LRANGE", args[1], 0, -1), b"set": ("SMEMBERS", args[1]),
                 b"zset": ("ZRANGE", args[1], 0, -1)}.get(kind)
        elements = link.call(*fetch) if fetch else []
        out: list[bytes] = []
        for pattern in _sort_patterns(args):
            star = pattern.find(b"*")
            arrow = pattern.find(b"->", star + 1)
            stem = pattern if arrow < 0 or arrow + 2 >= len(pattern) else pattern[:arrow]
            out.extend(stem.replace(b"*", e, 1) for e in elements)
        return list(dict.fromkeys(out))

    def _keys_and_flags(self, args: list[bytes]) -> list[tuple[bytes, list[bytes]]]:
        reply = self.control.call("COMMAND", "GETKEYSANDFLAGS", *args)
        if not isinstance(reply, list):
            raise StreamError(f"COMMAND GETKEYSANDFLAGS answered {reply!r}")
        return [(item[0], list(item[1])) for item in reply]

    def _unsupported(self, what: str, why: str) -> None:
        count = self.stats.unsupported.get(what, 0)
        self.stats.unsupported[what] = count + 1
        if count == 0:
            log.warning("import_command_skipped", command=what, reason=why)

    # --- commands spanning groups --------------------------------------------------------------------

    def _cross(self, args: list[bytes], raw: bytes, end: int, keys_flags: list[tuple[bytes, list[bytes]]]) -> None:
        group = self.router.group
        self.sync()
        keys = list(dict.fromkeys(k for k, _ in keys_flags))
        receiving: list[int] = []
        touched: list[int] = []
        for k, flags in keys_flags:
            g = group(k)
            if RECEIVING_FLAGS.intersection(flags) and g not in receiving:
                receiving.append(g)
            if not (b"RO" in flags or b"ro" in flags) and g not in touched:
                touched.append(g)
        order = receiving + [g for g in touched if g not in receiving]
        if len(receiving) > 1:
            log.warning("import_cross_group_two_receivers", command=args[0].decode(errors="replace"))
        for g in order:
            if end <= self.skip[g]:
                self.stats.skipped_resume += 1
                continue
            foreign = [k for k in keys if group(k) != g]
            pre = bytearray()
            n = 1 + len(foreign)  # the command and the deletes after it
            if g in receiving:
                for k in foreign:
                    pre += pack("DEL", k)
                    n += 1
                    payload, expire_at = self._fetch(k)
                    if payload is not None:
                        if expire_at > 0:
                            pre += pack("RESTORE", k, expire_at, payload, "REPLACE", "ABSTTL")
                        else:
                            pre += pack("RESTORE", k, 0, payload, "REPLACE")
                        n += 1
            post = b"".join(pack("DEL", k) for k in foreign)
            link = self.links[g]
            link.send(MULTI + pre + raw + post + marker_commands(Marker(self.replid, end, self.selected)) + EXEC,
                      n + 5, expect_exec(link, self._error))
            link.drain()
            self.stats.commands += 1
            crash_point("cross-group")
        self.sent = self.applied = end

    def _fetch(self, key: bytes) -> tuple[bytes | None, int]:
        link = self.links[self.router.group(key)]
        payload = link.call("DUMP", key)
        expire_at = link.call("PEXPIRETIME", key) if payload is not None else -1
        return payload, int(expire_at)

    # --- special commands --------------------------------------------------------------------------

    def _select(self, args: list[bytes], raw: bytes, end: int) -> None:
        try:
            self.selected = int(args[1])
        except (IndexError, ValueError):
            raise StreamError(f"the source's stream holds a malformed SELECT at offset {end}") from None

    def _multi(self, args: list[bytes], raw: bytes, end: int) -> None:
        self.in_multi = True

    def _exec(self, args: list[bytes], raw: bytes, end: int) -> None:
        self.in_multi = False

    def _flush_all(self, args: list[bytes], raw: bytes, end: int) -> None:
        self._empty_groups(args, end)

    def _flush_db(self, args: list[bytes], raw: bytes, end: int) -> None:
        if self.selected == self.db:
            self._empty_groups(args, end)

    def _empty_groups(self, args: list[bytes], end: int) -> None:
        command = pack("FLUSHDB", *args[1:2])  # ASYNC / SYNC kept
        for g in range(len(self.links)):
            self._add(g, command, end)

    def _swapdb(self, args: list[bytes], raw: bytes, end: int) -> None:
        dbs = {_int(a) for a in args[1:3]}
        if self.db in dbs and len(dbs) == 2:
            raise StreamError(f"the source ran SWAPDB with database {self.db} (offset {end}); the import cannot "
                              "follow that (the stream does not carry the data swapped in). Run the import again: "
                              "it loads a fresh snapshot")

    def _move(self, args: list[bytes], raw: bytes, end: int) -> None:
        target = _int(args[2]) if len(args) > 2 else None
        if self.selected == self.db and target != self.db:
            self._add(self.router.group(args[1]), pack("DEL", args[1]), end)  # the key left the database
        elif self.selected != self.db and target == self.db:
            self._moved_in("MOVE", end)

    def _copy(self, args: list[bytes], raw: bytes, end: int) -> None:
        target: int | None = self.selected
        upper = [a.upper() for a in args]
        if b"DB" in upper[3:]:
            i = upper.index(b"DB", 3)
            target = _int(args[i + 1]) if i + 1 < len(args) else None
        if self.selected == self.db and target == self.db:
            if b"DB" in upper[3:]:
                i = upper.index(b"DB", 3)
                args = args[:i] + args[i + 2 :]
                raw = pack(*args)
            self._keyed(args, raw, end, None, args[1:3])
        elif self.selected != self.db and target == self.db:
            self._moved_in("COPY", end)

    def _moved_in(self, command: str, end: int) -> None:
        raise StreamError(f"the source ran {command} of a key into database {self.db} (offset {end}); the import "
                          "cannot follow that (the stream does not carry the key's value). Run the import again: "
                          "it loads a fresh snapshot")

    def _error(self, error: ReplyError) -> None:
        self.stats.errors += 1
        if len(self.stats.error_examples) < ERROR_EXAMPLES:
            self.stats.error_examples.append(str(error))
            log.warning("import_command_failed", error=str(error))

    # --- batches -------------------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        """True if the open batch should be sent now."""
        if self.in_multi:
            return False
        if self.buffered:
            return self.buffered >= BATCH_COMMANDS or now - self.batch_started >= BATCH_SECONDS
        return now - self.last_heartbeat >= HEARTBEAT_SECONDS and self.offset > self.sent

    def flush(self, every_group: bool = False) -> None:
        """Send the open batch: per group, its commands and its new marker in one transaction."""
        end = self.offset
        marker = marker_commands(Marker(self.replid, end, self.selected))
        now = time.monotonic()
        heartbeat = every_group or now - self.last_heartbeat >= HEARTBEAT_SECONDS
        for g, link in enumerate(self.links):
            count = self.counts[g]
            if not count and not (heartbeat and end > self.skip[g]):
                continue
            link.drain(keep=MAX_OUTSTANDING)
            link.send(MULTI + self.out[g] + marker + EXEC, count + 5, expect_exec(link, self._error))
            self.out[g] = bytearray()
            self.counts[g] = 0
        if heartbeat:
            self.last_heartbeat = now
        self.buffered = 0
        self.sent = end
        self.stats.batches += 1

    def sync(self) -> int:
        """Send what is open and wait until every group confirmed it; returns the offset applied."""
        if self.buffered or self.offset > self.sent:
            self.flush()
        for link in self.links:
            link.drain()
        self.applied = self.sent
        return self.applied

    def settle(self) -> None:
        """Read the replies that have arrived (waiting only beyond ``MAX_OUTSTANDING``); ``applied`` moves on
        once nothing is owed."""
        idle = True
        for link in self.links:
            link.drain(keep=MAX_OUTSTANDING)
            link.poll()
            idle = idle and link.pending == 0
        if idle:
            self.applied = self.sent


def _sort_patterns(args: list[bytes]) -> list[bytes]:
    """SORT's BY and GET patterns that name other keys (with a ``*``; ``#`` and constant ones do not)."""
    out: list[bytes] = []
    i = 2
    while i < len(args):
        word = args[i].upper()
        if word in (b"BY", b"GET") and i + 1 < len(args):
            if b"*" in args[i + 1]:
                out.append(args[i + 1])
            i += 2
        elif word == b"LIMIT":
            i += 3
        elif word == b"STORE":
            i += 2
        else:
            i += 1
    return out


def _int(value: bytes) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


__all__ = ["Applier", "ApplyStats", "StreamError", "StreamParser"]
