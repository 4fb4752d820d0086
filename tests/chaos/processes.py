"""The one place the chaos suite starts kvstore-proxy and kvstore-sentinel processes.

Same command lines as ``tests/proxy/conftest.py``'s ``ProxyProcess`` and ``tests/sentinel``'s
``SentinelFactory``; when those become one shared helper, only this module changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kvstore_admin.processes import LocalProcess, free_port, redis_ping, spawn, wait_until


def spawn_proxy(zk_hosts: str, cluster: str, log_dir: Path, *args: str, port: int | None = None) -> LocalProcess:
    """Start a kvstore-proxy (one worker) on ``port`` (a free one if None); does not wait."""
    port = port or free_port()
    argv = [sys.executable, "-m", "kvstore_proxy", "--zk", zk_hosts, "--cluster", cluster,
            "--listen", f"127.0.0.1:{port}", "--workers", "1", "--log-format", "json", "--log-level", "info",
            *args]
    return spawn(f"proxy-{port}", argv, port, log_dir / f"proxy-{port}.log")


def wait_proxy(proc: LocalProcess, timeout: float = 30.0) -> None:
    wait_until(lambda: redis_ping(proc.port) or not proc.alive(), timeout, f"proxy on port {proc.port}")
    if not proc.alive():
        raise RuntimeError(f"proxy exited at start; see {proc.log}")


def spawn_sentinel(zk_hosts: str, cluster: str, log_dir: Path, sentinel_id: str, *args: str) -> LocalProcess:
    """Start a kvstore-sentinel with JSON logs; does not wait (see ``wait_sentinel``)."""
    argv = [sys.executable, "-m", "kvstore_sentinel", "--zk", zk_hosts, "--cluster", cluster, "--id", sentinel_id,
            "--log-format", "json", "--log-level", "info", *args]
    return spawn(f"sentinel-{sentinel_id}", argv, 0, log_dir / f"sentinel-{sentinel_id}.log")


def log_events(proc: LocalProcess, name: str) -> list[dict[str, Any]]:
    """The JSON log events called ``name`` that ``proc`` wrote so far."""
    out: list[dict[str, Any]] = []
    try:
        lines = Path(proc.log).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        if line.startswith("{") and f'"{name}"' in line:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                out.append(event)
    return out


def wait_sentinel(proc: LocalProcess, timeout: float = 30.0) -> None:
    wait_until(lambda: bool(log_events(proc, "sentinel_started")) or not proc.alive(), timeout,
               f"{proc.name} to start")
    if not proc.alive():
        raise RuntimeError(f"{proc.name} exited at start; see {proc.log}")
