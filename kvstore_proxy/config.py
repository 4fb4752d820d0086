"""The proxy's settings, as parsed from the command line."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kvstore_cluster.tls import TLSFiles
from kvstore_cluster.zkauth import ZkCredentials

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    zk: str = "127.0.0.1:2181"
    cluster: str = "default"
    host: str = "127.0.0.1"
    port: int = 6380  # 0 with --listen none: clients are served over TLS only (tls_listen)
    workers: int = 1
    requirepass: str | None = None
    backend_password: str | None = None
    timeout: float = 5.0  # per request, seconds
    max_clients: int = 10000
    max_request_size: int = 512 * 1024 * 1024  # per bulk string, like proto-max-bulk-len
    idle_timeout: float = 0.0  # 0 = never close idle clients
    zk_session_timeout: float = 10.0
    slowlog_slower_than: int = 10000  # microseconds; negative disables
    slowlog_max_len: int = 128
    latency_monitor_threshold: int = 0  # milliseconds; 0 disables LATENCY's event sampling, as in Redis
    latency_tracking: bool = True  # per-command latency histograms (INFO latencystats, LATENCY HISTOGRAM)
    monitor_output_limit: int = 32 * 1024 * 1024  # bytes a MONITOR client may leave unread before it is cut off
    drain_timeout: float = 5.0
    log_format: str = "console"
    log_level: str = "info"
    max_leases: int = 4096  # leased backend connections per worker (transactions, blocking, pub/sub)
    max_leases_per_client: int = 64
    # A subscriber is disconnected past ``hard`` bytes of unsent output, or past ``soft`` bytes for
    # ``soft_seconds`` (Redis's client-output-buffer-limit pubsub, same defaults).
    pubsub_output_limit: tuple[int, int, float] = (32 * 1024**2, 8 * 1024**2, 60.0)
    # --metrics-listen: where /metrics is served (every worker binds it, SO_REUSEPORT); None: nowhere
    metrics_listen: tuple[str, int] | None = None
    zk_credentials: ZkCredentials | None = field(default=None, repr=False)  # kvstore_cluster.zkauth
    tls_listen: tuple[str, int] | None = None  # --tls-listen, served beside (or instead of) --listen
    tls_files: TLSFiles | None = None
    max_clients_per_address: int | None = None  # limits.py; per proxy, each worker takes its share
    max_rps_per_address: int | None = None


def parse_output_limit(text: str) -> tuple[int, int, float]:
    """``"<hard> <soft> <seconds>"`` as in Redis's client-output-buffer-limit (``32mb 8mb 60``); 0 disables a limit."""
    parts = text.split()
    if len(parts) != 3:
        raise ValueError(f"expected '<hard> <soft> <seconds>', e.g. '32mb 8mb 60', got {text!r}")
    sizes = []
    for part in parts[:2]:
        m = re.fullmatch(r"([0-9]+)([a-zA-Z]*)", part)
        if m is None or m.group(2).lower() not in _UNITS:
            raise ValueError(f"bad size {part!r}: a number with an optional unit (b, k, kb, m, mb, g, gb)")
        sizes.append(int(m.group(1)) * _UNITS[m.group(2).lower()])
    if not parts[2].isdigit():
        raise ValueError(f"bad seconds {parts[2]!r}: a whole number")
    return sizes[0], sizes[1], float(parts[2])
