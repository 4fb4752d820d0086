"""The scratch redis-server that loads the source's snapshot (an RDB file), so the import reads keys with DUMP.

It runs on 127.0.0.1 with a random password, in the import's work directory, and dies with the
admin process (``PR_SET_PDEATHSIG``), so a killed import leaves no server behind.
"""

from __future__ import annotations

import ctypes
import secrets
import signal
import subprocess
import time
from pathlib import Path

from kvstore_admin.errors import PROCESS_FAILED, AdminError
from kvstore_admin.importing.resp import Conn, LinkError, ReplyError
from kvstore_admin.processes import free_port, redis_config, redis_ping, require_binary

RDB_NAME = "snapshot.rdb"
LOAD_RATE = 20 << 20  # bytes/s assumed when bounding the wait for the snapshot to load


class ScratchError(AdminError):
    code = PROCESS_FAILED


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Scratch:
    """A private redis-server holding the snapshot; ``conn`` is connected with the snapshot's db selected."""

    def __init__(self, workdir: Path, databases: int):
        self.workdir = workdir
        self.databases = databases
        self.password = secrets.token_hex(16)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "scratch-redis.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def rdb(self) -> Path:
        return self.workdir / RDB_NAME

    def start(self, timeout: float | None = None) -> None:
        """Start the server on ``rdb`` and wait until it has loaded it."""
        binary = require_binary("redis-server", "redis-server")
        self.port = free_port()
        conf = self.workdir / "scratch-redis.conf"
        conf.write_text(redis_config(self.port, self.workdir, password=self.password, extra={
            "dbfilename": RDB_NAME, "databases": str(self.databases), "maxmemory": "0",
            "loglevel": "notice", "enable-debug-command": "no",
        }))
        size = self.rdb.stat().st_size if self.rdb.exists() else 0
        deadline = time.monotonic() + (timeout if timeout is not None else 60.0 + size / LOAD_RATE)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([binary, str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        while not redis_ping(self.port, self.password):
            if self.proc.poll() is not None:
                raise ScratchError(f"the snapshot from the source could not be loaded by a local redis-server "
                                   f"({self._last_error()})")
            if time.monotonic() > deadline:
                self.stop()
                raise ScratchError(f"the local redis-server did not load the snapshot ({size:,} bytes) in time "
                                   f"({self._last_error()})")
            time.sleep(0.05)

    def _last_error(self) -> str:
        try:
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no log"
        # Redis logs the cause a line or two before "Fatal error loading the DB".
        for line in reversed(lines[-8:]):
            if "#" in line and "Fatal error loading" not in line:
                return line.split("#", 1)[1].strip()
        return lines[-1].strip() if lines else "no log"

    def connect(self, db: int) -> Conn:
        try:
            conn = Conn(self.address, 60.0, "the scratch redis-server")
            conn.call("AUTH", self.password)
            conn.call("SELECT", db)
        except (LinkError, ReplyError) as exc:
            raise ScratchError(f"the scratch redis-server does not answer ({exc})") from None
        return conn

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()  # its data is a copy: nothing to save
        self.proc.wait(10)
        self.proc = None
        try:
            self.rdb.unlink()
        except OSError:
            pass


def rdb_aux(path: Path) -> dict[bytes, bytes | int]:
    """The auxiliary fields at the start of an RDB file (``repl-stream-db``, ``repl-id``, ``redis-ver``, ...).

    A replica serving a snapshot cannot add a SELECT to the stream it passes on, so the database
    the stream starts in is only in ``repl-stream-db``.
    """
    out: dict[bytes, bytes | int] = {}
    with open(path, "rb") as f:
        data = f.read(1 << 16)
    if not data.startswith(b"REDIS"):
        return out
    pos = 9

    def length() -> tuple[int, bool]:
        nonlocal pos
        first = data[pos]
        kind = first >> 6
        if kind == 0:
            pos += 1
            return first & 0x3F, False
        if kind == 1:
            pos += 2
            return ((first & 0x3F) << 8) | data[pos - 1], False
        if first == 0x80:
            pos += 5
            return int.from_bytes(data[pos - 4 : pos], "big"), False
        if first == 0x81:
            pos += 9
            return int.from_bytes(data[pos - 8 : pos], "big"), False
        pos += 1
        return first & 0x3F, True

    def string() -> bytes | int:
        nonlocal pos
        n, special = length()
        if special:
            size = {0: 1, 1: 2, 2: 4}.get(n)
            if size is None:
                raise ValueError("compressed aux field")
            pos += size
            return int.from_bytes(data[pos - size : pos], "little", signed=True)
        pos += n
        return data[pos - n : pos]

    try:
        while pos < len(data) and data[pos] == 0xFA:
            pos += 1
            key = string()
            out[key if isinstance(key, bytes) else str(key).encode()] = string()
    except (IndexError, ValueError):
        pass
    return out


def stream_db(path: Path) -> int:
    """The database the stream after this snapshot starts in (-1 if the snapshot does not say)."""
    value = rdb_aux(path).get(b"repl-stream-db", -1)
    try:
        return int(value)
    except ValueError:
        return -1
