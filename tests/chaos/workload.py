"""The workload recorder: client threads run a write/read mix through the proxies and record every op.

Key scheme (every key is a plain Redis key, spread over all slots):

- ``S:<client>:<seq>``  SET once with a unique value (a lost or phantom key is unambiguous)
- ``L:<n>``             RPUSH of unique values by every client (order and duplicates checkable)
- ``C:<n>``             INCR by every client (final value within [acked, acked + unknown])
- ``R:<n>``             SET of unique values by every client (a register)

Reads: GET of an acknowledged ``S`` key, LRANGE of a list, GET of a counter or a register.

Stateful clients (``Workload(stateful=N)``) add transactions and a queue:

- ``{T:<n>}a`` ``{T:<n>}b``  both INCRed in one MULTI/EXEC (they must stay equal)
- ``Q:<n>``                  LPUSH of unique values, and BRPOP with a 1 s timeout by the same clients

The client speaks RESP over a plain socket (hiredis parses) rather than through redis-py, because
the outcome must say exactly whether the request left this process: a refused ``connect`` is
FAILED, anything that goes wrong after ``sendall`` started is UNKNOWN, and there must be no
library retry that could apply an INCR twice.
"""

from __future__ import annotations

import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence

import hiredis

from chaos.history import (
    FAILED,
    GET,
    GETC,
    GETR,
    INCR,
    LRANGE,
    MINCR,
    OK,
    QPOP,
    QPUSH,
    REG,
    RPUSH,
    SET,
    UNKNOWN,
    History,
    Op,
    classify_error,
)

LISTS = 24
COUNTERS = 24
REGISTERS = 24
# (kind, weight): writes dominate; reads check what the cluster serves while faults happen.
MIX = ((SET, 30), (RPUSH, 18), (INCR, 18), (REG, 10), (GET, 10), (LRANGE, 4), (GETC, 5), (GETR, 5))
TAGS = 8
QUEUES = 8
STATEFUL_MIX = ((MINCR, 40), (QPUSH, 32), (QPOP, 28))


class _NotSent(Exception):
    """The request certainly did not leave this process (connect failed)."""


class RespClient:
    """One blocking RESP2 connection to one address; no retries, no hidden commands."""

    def __init__(self, port: int, timeout: float, connect_timeout: float = 1.0, host: str = "127.0.0.1",
                 tls: ssl.SSLContext | None = None):
        self.address = (host, port)
        self.tls = tls
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.sock: socket.socket | None = None
        self.reader: hiredis.Reader | None = None

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.reader = None

    def _connect(self) -> None:
        try:
            sock = socket.create_connection(self.address, timeout=self.connect_timeout)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock)  # the handshake sends nothing of a request
        except OSError as exc:
            raise _NotSent(f"connect failed: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.timeout)
        self.sock = sock
        self.reader = hiredis.Reader(encoding="utf-8", errors="replace")

    def call(self, *args: str) -> object:
        """The reply (a ``hiredis.ReplyError`` for an error reply); raises ``_NotSent`` or ``OSError``."""
        return self.pipeline([args])[0]

    def pipeline(self, commands: Sequence[tuple[str, ...]]) -> list[object]:
        """Every command in one write; their replies in order (same errors as ``call``)."""
        if self.sock is None:
            self._connect()
        assert self.sock is not None and self.reader is not None
        self.sock.sendall(b"".join(hiredis.pack_command(c) for c in commands))  # type: ignore[arg-type]
        replies: list[object] = []
        while len(replies) < len(commands):
            reply = self.reader.gets()
            if reply is not False:
                replies.append(reply)
                continue
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("connection closed by the proxy")
            self.reader.feed(data)
        return replies


class WorkloadClient(threading.Thread):
    """One client: sequential ops on one proxy; after a connection problem it moves to the next proxy."""

    def __init__(self, index: int, ports: Callable[[], Sequence[int]], stop: threading.Event, seed: int,
                 rate: float, timeout: float, id_base: int, mix: Sequence[tuple[str, int]] = MIX,
                 tls: ssl.SSLContext | None = None):
        super().__init__(name=f"chaos-client-{index}", daemon=True)
        self.index = index
        self.tls = tls
        self.ports = ports
        self.stop_event = stop
        self.rng = random.Random(seed)
        self.period = 1.0 / rate if rate > 0 else 0.0
        self.timeout = timeout
        self.ops: list[Op] = []
        self.next_id = id_base
        self.seq = 0
        self.proxy_index = index
        self.client: RespClient | None = None
        self.acked_sets: list[Op] = []  # for reads of keys known to exist
        kinds, weights = zip(*mix, strict=True)
        self.kinds, self.weights = list(kinds), list(weights)
        self.crashed: BaseException | None = None

    def _client(self) -> RespClient:
        if self.client is None:
            ports = self.ports()
            port = ports[self.proxy_index % len(ports)]
            self.client = RespClient(port, self.timeout, tls=self.tls)
        return self.client

    def _drop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.proxy_index += 1

    def _make(self) -> tuple[Op, tuple[str, ...] | list[tuple[str, ...]]]:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        self.seq += 1
        value = f"{self.index}.{self.seq}"
        op = Op(self.next_id, self.index, kind, "")
        self.next_id += 1
        n = self.rng.randrange
        if kind == SET:
            op.key, op.value = f"S:{self.index}:{self.seq}", value
            return op, ("SET", op.key, value)
        if kind == RPUSH:
            op.key, op.value = f"L:{n(LISTS)}", value
            return op, ("RPUSH", op.key, value)
        if kind == INCR:
            op.key = f"C:{n(COUNTERS)}"
            return op, ("INCR", op.key)
        if kind == REG:
            op.key, op.value = f"R:{n(REGISTERS)}", value
            return op, ("SET", op.key, value)
        if kind == GET and self.acked_sets:
            op.key = self.rng.choice(self.acked_sets).key
            return op, ("GET", op.key)
        if kind == LRANGE:
            op.key = f"L:{n(LISTS)}"
            return op, ("LRANGE", op.key, "0", "-1")
        if kind == GETC:
            op.key = f"C:{n(COUNTERS)}"
            return op, ("GET", op.key)
        if kind == MINCR:
            op.key = f"T:{n(TAGS)}"
            return op, [("MULTI",), ("INCR", f"{{{op.key}}}a"), ("INCR", f"{{{op.key}}}b"), ("EXEC",)]
        if kind == QPUSH:
            op.key, op.value = f"Q:{n(QUEUES)}", value
            return op, ("LPUSH", op.key, value)
        if kind == QPOP:
            op.key = f"Q:{n(QUEUES)}"
            return op, ("BRPOP", op.key, "1")
        op.kind, op.key = GETR, f"R:{n(REGISTERS)}"
        return op, ("GET", op.key)

    def run_one(self) -> Op:
        op, args = self._make()
        client = self._client()
        op.proxy = client.address[1]
        op.start = time.monotonic()
        try:
            # A transaction is one write: its EXEC's reply says how it went (MULTI and the
            # +QUEUED replies come from the proxy itself).
            reply = client.pipeline(args)[-1] if isinstance(args, list) else client.call(*args)
        except _NotSent as exc:
            op.end, op.outcome, op.error = time.monotonic(), FAILED, str(exc)
            self._drop()
            return op
        except (OSError, ConnectionError) as exc:
            op.end, op.outcome, op.error = time.monotonic(), UNKNOWN, f"{type(exc).__name__}: {exc}"
            self._drop()
            return op
        op.end = time.monotonic()
        if isinstance(reply, hiredis.ReplyError):
            op.error = str(reply)
            op.outcome = classify_error(op.error)
            return op  # the proxy answered in order: the connection is still good
        op.outcome = OK
        op.result = reply
        if op.kind == QPOP:
            op.result = reply[1] if isinstance(reply, list) else None
        elif op.kind == MINCR and not isinstance(reply, list):
            op.outcome, op.error = FAILED, f"EXEC answered {reply!r}"  # nil: not run
        if self.rng.random() < 1 / 300:
            self._drop()  # now and then a fresh connection to the next proxy: clients stay spread
        if op.kind == SET:
            self.acked_sets.append(op)
            if len(self.acked_sets) > 2000:
                del self.acked_sets[:1000]
        return op

    def run(self) -> None:
        try:
            next_at = time.monotonic()
            while not self.stop_event.is_set():
                self.ops.append(self.run_one())
                if self.period:
                    # Pacing, not synchronisation: keep the load light enough for a shared 2-core box.
                    next_at = max(next_at + self.period, time.monotonic() - 1.0)
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        self.stop_event.wait(delay)
        except BaseException as exc:  # noqa: BLE001 - reported by Workload.stop
            self.crashed = exc
        finally:
            if self.client is not None:
                self.client.close()


class Workload:
    """``clients`` threads spread over the proxies; ``ports`` is read again after each reconnect."""

    def __init__(self, ports: Callable[[], Sequence[int]], clients: int = 6, rate: float = 80.0,
                 timeout: float = 8.0, seed: int = 0, stateful: int = 0, tls: ssl.SSLContext | None = None):
        self.stop_event = threading.Event()
        self.clients = [WorkloadClient(i, ports, self.stop_event, seed * 1000 + i, rate, timeout,
                                       id_base=i * 10_000_000, mix=MIX if i < clients else STATEFUL_MIX, tls=tls)
                        for i in range(clients + stateful)]
        self.started_at = 0.0

    def start(self) -> Workload:
        self.started_at = time.monotonic()
        for c in self.clients:
            c.start()
        return self

    def ops_since(self, t: float) -> tuple[int, int]:
        """(ok, total) ops that started after ``t`` (a progress probe for waits)."""
        ok = total = 0
        for c in self.clients:
            for op in reversed(c.ops):
                if op.start < t:
                    break
                total += 1
                ok += op.outcome == OK
        return ok, total

    def stop(self, timeout: float = 30.0) -> History:
        self.stop_event.set()
        for c in self.clients:
            c.join(timeout)
        stuck = [c.name for c in self.clients if c.is_alive()]
        if stuck:
            raise RuntimeError(f"workload clients did not stop: {stuck}")
        crashed = [(c.name, c.crashed) for c in self.clients if c.crashed is not None]
        if crashed:
            raise RuntimeError(f"workload clients crashed: {crashed}")
        history = History()
        for c in self.clients:
            history.extend(c.ops)
        return history
