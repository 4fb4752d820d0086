"""The proxy's settings, as parsed from the command line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    zk: str = "127.0.0.1:2181"
    cluster: str = "default"
    host: str = "127.0.0.1"
    port: int = 6380
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
    latency_tracking: bool = False  # per-command latency histograms (INFO latencystats, LATENCY HISTOGRAM)
    monitor_output_limit: int = 32 * 1024 * 1024  # bytes a MONITOR client may leave unread before it is cut off
    drain_timeout: float = 5.0
    log_format: str = "console"
    log_level: str = "info"
