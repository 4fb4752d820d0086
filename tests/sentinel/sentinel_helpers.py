"""Sentinel test helpers: sentinel subprocesses with JSON logs as events, redis restarts, timed waits."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from kvstore_admin.processes import LocalProcess, spawn, start_redis, wait_until

FAST = ["--interval", "0.2", "--down-after", "1.0", "--zk-session-timeout", "3"]


class SentinelProc:
    """A ``python -m kvstore_sentinel`` subprocess whose JSON log lines can be read as events."""

    def __init__(self, proc: LocalProcess, sentinel_id: str):
        self.proc = proc
        self.id = sentinel_id

    @property
    def log(self) -> Path:
        return Path(self.proc.log)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        try:
            lines = self.log.read_text().splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if name is None or event.get("event") == name:
                out.append(event)
        return out

    def wait_event(self, name: str, timeout: float = 20.0, **match: Any) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in self.events(name) if all(e.get(k) == v for k, v in match.items())]
            return bool(found)

        try:
            wait_until(seen, timeout, f"sentinel {self.id} to log {name} {match or ''}")
        except TimeoutError:
            tail = "\n".join(self.log.read_text().splitlines()[-30:])
            raise TimeoutError(f"no {name} {match} from sentinel {self.id}; log tail:\n{tail}") from None
        return found[0]

    def alive(self) -> bool:
        return self.proc.alive()

    def stop(self) -> None:
        self.proc.stop(timeout=5)


class SentinelFactory:
    def __init__(self, base: Path):
        self.base = base
        self.procs: list[SentinelProc] = []

    def start(self, zk_hosts: str, cluster: str, *args: str, sentinel_id: str | None = None,
              env: dict[str, str] | None = None, wait_leader: bool = True) -> SentinelProc:
        sid = sentinel_id or f"s{len(self.procs) + 1}"
        argv = [sys.executable, "-m", "kvstore_sentinel", "--zk", zk_hosts, "--cluster", cluster, "--id", sid,
                "--log-format", "json", "--log-level", "info", *args]
        proc = spawn(f"sentinel-{sid}", argv, 0, self.base / f"sentinel-{sid}.log",
                     env={**os.environ, **(env or {})})
        handle = SentinelProc(proc, sid)
        self.procs.append(handle)
        handle.wait_event("sentinel_started", timeout=20)
        if wait_leader:
            handle.wait_event("leader_elected", timeout=20)
        return handle

    def stop_all(self) -> None:
        for p in self.procs:
            p.proc.signal(18)  # SIGCONT, in case a test left it stopped
            p.stop()


def restart_redis(factory: Any, proc: LocalProcess, **kwargs: Any) -> LocalProcess:
    """Start redis-server again on the same port and directory as ``proc``; ``factory`` stops it at the end."""
    new = start_redis(Path(proc.log).parent, port=proc.port, **kwargs)
    factory.procs.append(new)
    return new


def wait_for(predicate, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    """``wait_until`` that returns the time.monotonic() at which the predicate became true."""
    wait_until(predicate, timeout, what, interval=0.02)
    return time.monotonic()


def event_time(event: dict[str, Any]) -> float:
    """The wall time of a JSON log event (structlog ISO timestamp)."""
    from datetime import datetime

    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


class TcpProxy:
    """A TCP relay between one client and a server that a test can cut (blackhole) and heal.

    Cut drops bytes in both directions but keeps the sockets open, as a partitioned network does:
    the client notices only through its own timeouts. Heal resets the old connections.
    """

    def __init__(self, target: tuple[str, int]):
        import socket
        import threading

        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_flag = threading.Event()
        self.closed = threading.Event()
        self.conns: list[Any] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: Any, dst: Any) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            if self.cut_flag.is_set():
                continue  # blackholed
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def cut(self) -> None:
        self.cut_flag.set()

    def heal(self) -> None:
        import socket

        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self.cut_flag.clear()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        self.heal()


class GarbageServer:
    """A TCP server that answers every connection with bytes that are not the Redis protocol."""

    def __init__(self, payload: bytes = b"HTTP/1.1 400 Bad Request\r\n\r\n\x00\xff garbage"):
        import socket
        import threading

        self.payload = payload
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: Any) -> None:
        # Answer each request with garbage and keep the connection open, like a wrong service would.
        try:
            while conn.recv(65536):
                conn.sendall(self.payload)
        except OSError:
            pass
        conn.close()

    def close(self) -> None:
        self.listener.close()


def keys_of_group(slots: Any, group_id: str, count: int, prefix: str = "key") -> list[str]:
    """``count`` keys whose slots belong to ``group_id`` in slot table ``slots``."""
    from kvstore_cluster.slots import key_slot

    out, i = [], 0
    while len(out) < count:
        key = f"{prefix}:{i}"
        if slots.owner(key_slot(key.encode())) == group_id:
            out.append(key)
        i += 1
    return out
