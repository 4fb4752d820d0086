"""The replication stream between the thread reading the source and the applier: memory first, a file beyond a limit.

The source drops a replica that does not read its stream (client-output-buffer-limit), so the
reader never waits for the applier: while the snapshot loads, or whenever the cluster is slower
than the source, the stream piles up here, on disk past ``memory_limit``.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from pathlib import Path
from typing import BinaryIO

MEMORY_LIMIT = 64 << 20


class SpoolClosed(Exception):
    """The reader stopped (``reason`` says why) and every byte it spooled has been read."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Spool:
    def __init__(self, directory: Path, memory_limit: int = MEMORY_LIMIT):
        self.path = directory / "stream.spool"
        self.memory_limit = memory_limit
        self.cond = threading.Condition()
        self.chunks: deque[bytes] = deque()
        self.in_memory = 0
        self.file_written = 0  # bytes in the spill file
        self.file_read = 0
        self.writer: BinaryIO | None = None
        self.reader: BinaryIO | None = None
        self.closed: str | None = None
        self.appended = 0  # every byte ever appended

    @property
    def buffered(self) -> int:
        with self.cond:
            return self.in_memory + self.file_written - self.file_read

    def append(self, data: bytes) -> None:
        with self.cond:
            self.appended += len(data)
            # Once spilling, everything goes to the file until it has been read back, to keep the order.
            if self.file_written == 0 and self.in_memory + len(data) <= self.memory_limit:
                self.chunks.append(data)
                self.in_memory += len(data)
            else:
                if self.writer is None:
                    self.writer = open(self.path, "wb")  # noqa: SIM115 - closed in _rewind/discard
                    self.reader = open(self.path, "rb")  # noqa: SIM115
                self.writer.write(data)
                self.writer.flush()
                self.file_written += len(data)
            self.cond.notify_all()

    def close(self, reason: str) -> None:
        with self.cond:
            if self.closed is None:
                self.closed = reason
            self.cond.notify_all()

    def read(self, max_bytes: int, timeout: float) -> bytes:
        """Up to ``max_bytes`` in order; ``b""`` if nothing came within ``timeout``; ``SpoolClosed`` at the end."""
        with self.cond:
            if not self.chunks and self.file_read == self.file_written:
                if self.closed is None:
                    self.cond.wait(timeout)
                if not self.chunks and self.file_read == self.file_written:
                    if self.closed is not None:
                        raise SpoolClosed(self.closed)
                    return b""
            if self.chunks:
                out = [self.chunks.popleft()]
                size = len(out[0])
                while self.chunks and size + len(self.chunks[0]) <= max_bytes:
                    size += len(self.chunks[0])
                    out.append(self.chunks.popleft())
                self.in_memory -= size
                return b"".join(out)
            assert self.reader is not None
            data = self.reader.read(min(max_bytes, self.file_written - self.file_read))
            self.file_read += len(data)
            if self.file_read == self.file_written:
                self._rewind()
            return data

    def _rewind(self) -> None:
        # Everything spilled has been read: back to memory, with an empty file.
        assert self.writer is not None and self.reader is not None
        self.writer.close()
        self.reader.close()
        self.writer = self.reader = None
        self.file_written = self.file_read = 0
        try:
            os.unlink(self.path)
        except OSError:
            pass
