"""The source Redis: connecting (with the password), what it is (role, version, keys), and its replication link.

The link is a replica's: ``PSYNC`` for the snapshot (an RDB, saved to a file) or to continue from
an offset, then the command stream, read by a thread into a :class:`Spool` and acknowledged
(``REPLCONF ACK``) every second with the offset the cluster has applied.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from kvstore_admin.errors import NODE_FAILED, USER_ERROR, AdminError
from kvstore_admin.importing.resp import Conn, LinkError, ProtocolError, ReplyError, pack
from kvstore_admin.importing.spool import Spool

log = structlog.get_logger("kvstore.admin.import")

CONNECT_TIMEOUT = 10.0
ACK_INTERVAL = 1.0
PASSWORD_HINT = "give it with --password or KVSTORE_SOURCE_PASSWORD"


class SourceError(AdminError):
    """The source cannot be imported from (unreachable, password, refuses PSYNC, sends garbage)."""

    code = NODE_FAILED


@dataclass(frozen=True, slots=True)
class SourceInfo:
    address: str
    role: str  # "master" or "replica"
    master: str | None  # the master a replica follows
    version: str
    keys: int  # in the database imported
    max_db: int  # the highest database index holding keys


def auth_failure(address: str, exc: ReplyError, password: str | None) -> SourceError:
    text = str(exc)
    if text.startswith("NOAUTH") or (text.startswith("NOPERM") and not password):
        return SourceError(f"the source {address} needs a password ({PASSWORD_HINT})", USER_ERROR)
    if "without any password configured" in text:
        return SourceError(f"the source {address} has no password, but --password was given", USER_ERROR)
    return SourceError(f"the source {address} refused the password ({text})", USER_ERROR)


def connect(address: str, password: str | None, timeout: float = CONNECT_TIMEOUT) -> Conn:
    """A connection to the source, authenticated; every failure is one clear ``SourceError``."""
    try:
        conn = Conn(address, timeout, "the source")
    except LinkError as exc:
        raise SourceError(str(exc)) from None
    try:
        if password:
            try:
                conn.call("AUTH", password)
            except ReplyError as exc:
                raise auth_failure(address, exc, password) from None
        try:
            pong = conn.call("PING")
        except ReplyError as exc:
            if str(exc).startswith(("NOAUTH", "NOPERM")):
                raise auth_failure(address, exc, password) from None
            raise SourceError(f"the source {address} answered PING with an error ({exc})") from None
        if pong not in (b"PONG", "PONG"):
            raise SourceError(f"the source {address} does not answer PING like Redis (got {pong!r})")
    except (LinkError, ProtocolError) as exc:
        conn.close()
        raise SourceError(f"the source {address}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def parse_info(text: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.decode(errors="replace").splitlines():
        if ":" in line and not line.startswith("#"):
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    return out


def keyspace_keys(info: dict[str, str], db: int) -> int:
    """Keys of ``db`` from INFO's keyspace line ``dbN:keys=K,expires=E,...``."""
    line = info.get(f"db{db}")
    if not line:
        return 0
    for part in line.split(","):
        k, _, v = part.partition("=")
        if k == "keys" and v.isdigit():
            return int(v)
    return 0


def probe(conn: Conn, db: int) -> SourceInfo:
    """Role, version and key counts from one INFO."""
    try:
        raw = conn.call("INFO")
    except ReplyError as exc:
        raise SourceError(f"the source {conn.address} refuses INFO ({exc})") from None
    except (LinkError, ProtocolError) as exc:
        raise SourceError(f"the source {conn.address}: {exc}") from None
    if not isinstance(raw, bytes):
        raise SourceError(f"the source {conn.address} answered INFO with {type(raw).__name__}, not text")
    info = parse_info(raw)
    if "redis_version" not in info:
        raise SourceError(f"the source {conn.address} does not look like Redis (INFO has no redis_version)")
    dbs = [int(k[2:]) for k in info if k.startswith("db") and k[2:].isdigit()]
    role = "replica" if info.get("role") == "slave" else "master"
    master = f"{info.get('master_host')}:{info.get('master_port')}" if role == "replica" else None
    return SourceInfo(address=conn.address, role=role, master=master, version=info["redis_version"],
                      keys=keyspace_keys(info, db), max_db=max(dbs, default=0))


def master_offset(conn: Conn) -> int:
    """The source's ``master_repl_offset`` (what it has written to its stream so far)."""
    info = parse_info(conn.call("INFO", "replication"))
    return int(info.get("master_repl_offset", "0") or 0)


# --- the replication link ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sync:
    """What PSYNC answered: a full resync (snapshot at ``offset``) or a continuation from ``offset``."""

    full: bool
    replid: str
    offset: int  # full: the snapshot's offset; continue: the offset we asked to continue after


def psync_refused(address: str, text: str) -> SourceError:
    if text.startswith("NOMASTERLINK"):
        return SourceError(f"the source {address} is a replica whose link to its master is down ({text}); "
                           "import when it is in sync again, or from its master")
    if text.startswith("LOADING"):
        return SourceError(f"the source {address} is loading its data set ({text}); try again when it is done")
    if text.startswith("NOPERM"):
        return SourceError(f"the source {address} refuses PSYNC for this user ({text}): the import follows writes "
                           "as a replica does, so the user needs +psync +replconf (or use a user that has them)",
                           USER_ERROR)
    return SourceError(f"the source {address} refuses PSYNC ({text}): the import follows writes as a replica does, "
                       "so PSYNC and REPLCONF must be enabled (check rename-command)", USER_ERROR)


class ReplicationLink:
    """The import's replica connection to the source."""

    def __init__(self, address: str, password: str | None, spool: Spool, timeout: float = CONNECT_TIMEOUT,
                 disk_snapshot: bool = False):
        self.address = address
        self.disk_snapshot = disk_snapshot
        self.password = password
        self.spool = spool
        self.timeout = timeout
        self.conn: Conn | None = None
        self.buf = bytearray()
        self.received = 0  # stream offset of the last byte received
        self.applied = 0  # set by the applier; acknowledged to the source
        self.rdb_bytes = 0
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()

    # raw reading (the RDB transfer is not RESP, so no hiredis here)

    def _fill(self) -> None:
        assert self.conn is not None
        try:
            data = self.conn.sock.recv(1 << 20)
        except OSError as exc:
            raise SourceError(f"lost the replication link to the source {self.address} ({exc})") from None
        if not data:
            raise SourceError(f"the source {self.address} closed the replication link")
        self.buf += data

    def _line(self, limit: int = 4096) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                return line
            if len(self.buf) > limit:
                raise SourceError(f"the source {self.address} sent garbage instead of a replication reply "
                                  f"({bytes(self.buf[:60])!r}...)")
            self._fill()

    def handshake(self, replid: str | None, offset: int | None) -> Sync:
        """Connect and PSYNC: continue after ``offset`` of ``replid`` if given, else ask for a snapshot."""
        self.conn = connect(self.address, self.password, self.timeout)
        conn = self.conn
        try:
            try:
                # Without "capa eof" the source saves the snapshot to its disk first (and starts at once).
                capa = ("capa", "psync2") if self.disk_snapshot else ("capa", "eof", "capa", "psync2")
                conn.call("REPLCONF", *capa)
            except ReplyError as exc:
                raise psync_refused(self.address, str(exc)) from None
            # The reply to PSYNC is a status line followed by raw data: read it by hand from here on.
            if conn.reader.has_data():
                raise SourceError(f"the source {self.address} sent more than it was asked for")
            if replid is None or offset is None:
                conn.send(pack("PSYNC", "?", -1))
            else:
                conn.send(pack("PSYNC", replid, offset + 1))
            line = self._line()
            while line == b"":  # keepalive newlines never end in \r\n, but be lenient
                line = self._line()
        except (LinkError, ProtocolError) as exc:
            raise SourceError(f"the source {self.address}: {exc}") from None
        text = line.decode(errors="replace").lstrip("\n")
        if text.startswith("-"):
            raise psync_refused(self.address, text[1:])
        parts = text[1:].split() if text.startswith("+") else []
        if parts[:1] == ["FULLRESYNC"] and len(parts) == 3 and len(parts[1]) == 40 and parts[2].isdigit():
            self.received = self.applied = int(parts[2])
            return Sync(True, parts[1], int(parts[2]))
        if parts[:1] == ["CONTINUE"] and replid is not None and offset is not None:
            new_id = parts[1] if len(parts) > 1 else replid
            if len(new_id) != 40:
                raise SourceError(f"the source {self.address} answered PSYNC with {text!r}")
            self.received = self.applied = offset
            return Sync(False, new_id, offset)
        raise SourceError(f"the source {self.address} answered PSYNC with {text[:80]!r}, not FULLRESYNC/CONTINUE")

    def receive_rdb(self, path: Path, on_bytes: Any = None) -> int:
        """Save the snapshot that follows FULLRESYNC to ``path``; returns its size."""
        assert self.conn is not None
        self.conn.settimeout(max(self.timeout, 60.0))  # the source may need a while to fork and start sending
        while True:
            while self.buf[:1] == b"\n":  # keepalives while the source prepares the snapshot
                del self.buf[:1]
            if self.buf:
                break
            self._fill()
        header = self._line()
        if not header.startswith(b"$"):
            raise SourceError(f"the source {self.address} sent {header[:60]!r} where the snapshot should start")
        size = 0
        with open(path, "wb") as out:
            if header.startswith(b"$EOF:"):
                mark = header[5:]
                if len(mark) != 40:
                    raise SourceError(f"the source {self.address} sent a malformed snapshot header {header[:60]!r}")
                while True:
                    at = self.buf.find(mark)
                    if at >= 0:
                        out.write(self.buf[:at])
                        size += at
                        del self.buf[: at + len(mark)]
                        break
                    keep = len(mark) - 1  # a mark may straddle two reads
                    if len(self.buf) > keep:
                        out.write(self.buf[:-keep])
                        size += len(self.buf) - keep
                        del self.buf[:-keep]
                    if on_bytes is not None:
                        on_bytes(size)
                    self._fill()
            else:
                try:
                    total = int(header[1:])
                except ValueError:
                    raise SourceError(f"the source {self.address} sent a malformed snapshot header "
                                      f"{header[:60]!r}") from None
                if total < 0:
                    raise SourceError(f"the source {self.address} sent a snapshot of negative size")
                while size < total:
                    if not self.buf:
                        self._fill()
                    take = min(len(self.buf), total - size)
                    out.write(self.buf[:take])
                    del self.buf[:take]
                    size += take
                    if on_bytes is not None:
                        on_bytes(size)
        self.rdb_bytes = size
        return size

    def start_stream(self) -> None:
        """Start the thread that spools the stream and acknowledges the applied offset."""
        assert self.conn is not None
        self._ack()  # a diskless master starts streaming only once the replica acknowledges
        if self.buf:
            self._spool(bytes(self.buf))
            self.buf.clear()
        self.thread = threading.Thread(target=self._run, name="import-stream", daemon=True)
        self.thread.start()

    def _spool(self, data: bytes) -> None:
        self.spool.append(data)
        self.received += len(data)

    def _ack(self) -> None:
        assert self.conn is not None
        self.conn.send(pack("REPLCONF", "ACK", self.applied))

    def _run(self) -> None:
        assert self.conn is not None
        sock = self.conn.sock
        sock.settimeout(0.2)
        last_ack = time.monotonic()
        reason = "stopped"
        try:
            while not self.stopping.is_set():
                try:
                    data = sock.recv(1 << 20)
                except TimeoutError:
                    data = None
                if data == b"":
                    reason = f"the source {self.address} closed the replication link"
                    break
                if data:
                    self._spool(data)
                now = time.monotonic()
                if now - last_ack >= ACK_INTERVAL:
                    self._ack()
                    last_ack = now
        except (OSError, LinkError) as exc:
            reason = f"lost the replication link to the source {self.address} ({exc})"
        finally:
            self.spool.close(reason)

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(5)
        if self.conn is not None:
            self.conn.close()
