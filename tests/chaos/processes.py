"""The one place the chaos suite starts kvstore-proxy and kvstore-sentinel processes.

Built on ``kvstore_admin.processes`` (``start_proxy``, ``sentinel_argv`` and ``spawn``), the code behind
``kvstore-admin local up`` that the other suites start their processes with too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvstore_admin.processes import LocalProcess, free_port, sentinel_argv, spawn, start_proxy, wait_until


def start_chaos_proxy(zk_hosts: str, cluster: str, log_dir: Path, *args: str, port: int | None = None,
                      record: Callable[[LocalProcess], object] | None = None,
                      tls: tuple[tuple[str, ...], Any] | None = None) -> LocalProcess:
    """Start a kvstore-proxy (one worker, JSON logs) on ``port`` (a free one if None) and wait for PING.

    With ``tls`` (its --tls-* flags, a client context to ping it with) it serves TLS only, on ``port``.
    """
    port = port or free_port()
    tls_args = ("--listen", "none", "--tls-listen", f"127.0.0.1:{port}", *tls[0]) if tls else ()
    proc = start_proxy(zk_hosts, cluster, log_dir / f"proxy-{port}.log", "--log-format", "json",
                       "--log-level", "info", *args, *tls_args, port=port, record=record,
                       tls_context=tls[1] if tls else None)
    proc.name = f"proxy-{port}"
    return proc


def spawn_sentinel(zk_hosts: str, cluster: str, log_dir: Path, sentinel_id: str, *args: str) -> LocalProcess:
    """Start a kvstore-sentinel with JSON logs; does not wait (see ``wait_sentinel``)."""
    argv = sentinel_argv(zk_hosts, cluster, "--id", sentinel_id, "--log-format", "json", "--log-level", "info", *args)
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
