"""Helpers shared by the transaction, blocking, pub/sub and lease tests."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable

import hiredis
import redis

from kvstore_admin.processes import wait_until
from kvstore_proxy import resp

Command = tuple[bytes | str, ...]


_END = b"$7\r\n__end__\r\n"


def exchange(port: int, commands: Iterable[Command], protocol: int = 2, timeout: float = 10.0,
             frames: bool = False) -> list[bytes]:
    """Send ``commands`` in one write on a fresh connection (after ``HELLO protocol``); each reply's exact bytes.

    ``frames``: read every frame (a SUBSCRIBE of N channels sends N) up to the reply of an
    ``ECHO __end__`` sent last, which the script must leave the connection able to answer.
    """
    commands = list(commands)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        buf = b""

        def read(n: int) -> list[bytes]:
            nonlocal buf
            out: list[bytes] = []
            while len(out) < n:
                end, complete = resp.scan_reply(buf, 0, len(buf), []) if buf else (0, False)
                if complete:
                    out.append(buf[:end])
                    buf = buf[end:]
                    continue
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {len(out)} of {n} replies"
                buf += chunk
            return out

        sock.sendall(hiredis.pack_command(("HELLO", str(protocol))))
        read(1)
        sock.sendall(b"".join(hiredis.pack_command(c) for c in commands))
        if not frames:
            return read(len(commands))
        sock.sendall(hiredis.pack_command(("ECHO", "__end__")))
        out: list[bytes] = []
        while not out or out[-1] != _END:
            out += read(1)
        return out[:-1]


def reset_socket(sock: socket.socket) -> None:
    """Close with a TCP reset, as a killed client's kernel would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def blocked_clients(client: redis.Redis) -> int:
    return int(client.info("clients")["blocked_clients"])


def wait_blocked(client: redis.Redis, n: int, timeout: float = 10.0) -> None:
    """Until exactly ``n`` clients are blocked on this Redis node."""
    wait_until(lambda: blocked_clients(client) == n, timeout, f"{n} blocked clients on the node")


def elapsed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    out = fn(*args, **kwargs)
    return out, time.monotonic() - t0
