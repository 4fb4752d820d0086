"""The ``kvstore-proxy`` command line: parse flags, then run one proxy in-process or supervise N workers."""

from __future__ import annotations

import os
import sys

import click

from kvstore_cluster import clickopts, logs
from kvstore_cluster.tls import ServerTLS, TLSConfigError, TLSFiles
from kvstore_cluster.zkauth import ZkCredentials
from kvstore_proxy.config import ProxyConfig, parse_output_limit


def _listen(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int] | None:
    return None if value == "none" else clickopts.address(ctx, param, value)


def _output_limit(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int, float]:
    try:
        return parse_output_limit(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--zk", envvar="KVSTORE_ZK", default="127.0.0.1:2181", show_default=True,
              help="ZooKeeper hosts (env KVSTORE_ZK).")
@click.option("--cluster", envvar="KVSTORE_CLUSTER", default="default", show_default=True,
              help="Cluster name (env KVSTORE_CLUSTER).")
@click.option("--listen", "listen", default="127.0.0.1:6380", show_default=True, callback=_listen,
              help="HOST:PORT to serve clients on (loopback by default); 'none': TLS only (--tls-listen).")
@click.option("--tls-listen", default=None, callback=clickopts.address, metavar="HOST:PORT",
              help="Serve clients over TLS on HOST:PORT too (--tls-cert-file, --tls-key-file); SIGHUP, or a "
                   "change of the files, reloads them.")
@click.option("--tls-cert-file", default=None, metavar="FILE", help="The proxy's certificate (PEM), with its chain.")
@click.option("--tls-key-file", default=None, metavar="FILE", help="The key of --tls-cert-file (PEM).")
@click.option("--tls-ca-cert-file", default=None, metavar="FILE",
              help="Require client certificates signed by this CA (PEM) on --tls-listen.")
@clickopts.redis_tls
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True,
              help="Processes sharing the port (SO_REUSEPORT); 1 runs in this process.")
@click.option("--requirepass", default=None, envvar="KVSTORE_PROXY_REQUIREPASS",
              help="Password clients must AUTH with.")
@click.option("--backend-password", default=None, envvar="KVSTORE_BACKEND_PASSWORD",
              help="Password of the Redis nodes (requirepass).")
@click.option("--timeout", type=click.FloatRange(min=0.001), default=5.0, show_default=True,
              help="Seconds a request may wait for its backend reply.")
@click.option("--max-clients", type=click.IntRange(min=1), default=10000, show_default=True)
@click.option("--max-request-size", type=click.IntRange(min=1), default=512 * 1024 * 1024, show_default=True,
              help="Largest bulk string a client may send, in bytes (Redis's proto-max-bulk-len).")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Close clients idle this many seconds (0: never).")
@click.option("--zk-session-timeout", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="ZooKeeper session timeout in seconds; fencing follows it.")
@click.option("--slowlog-slower-than", type=int, default=10000, show_default=True,
              help="Log requests slower than this many microseconds (negative: off).")
@click.option("--slowlog-max-len", type=click.IntRange(min=0), default=128, show_default=True)
@click.option("--latency-monitor-threshold", type=click.IntRange(min=0), default=0, show_default=True,
              help="LATENCY LATEST/HISTORY record requests taking at least this many milliseconds (0: off).")
@click.option("--latency-tracking/--no-latency-tracking", default=True, show_default=True,
              help="Keep per-command latency histograms (INFO latencystats, LATENCY HISTOGRAM, the "
                   "metrics' request duration histograms), as Redis does by default.")
@click.option("--monitor-output-limit", type=click.IntRange(min=1024), default=32 * 1024 * 1024,
              show_default=True, help="Bytes a MONITOR client may leave unread before it is disconnected.")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds to wait for replies in flight when stopping.")
@click.option("--log-format", type=click.Choice(logs.FORMATS), default="console", show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.option("--max-leases", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Backend connections each worker may lease to clients in a transaction, a blocking "
                   "command or pub/sub (each is one connection to a Redis master: mind its maxclients).")
@click.option("--max-leases-per-client", type=click.IntRange(min=1), default=64, show_default=True,
              help="Leased backend connections one client may hold at once (a pattern subscriber holds "
                   "one per group).")
@click.option("--pubsub-output-limit", default="32mb 8mb 60", show_default=True, callback=_output_limit,
              metavar="'HARD SOFT SECONDS'",
              help="Disconnect a subscriber with more unsent output than HARD, or than SOFT for SECONDS "
                   "(Redis's client-output-buffer-limit pubsub; 0 disables).")
@click.option("--metrics-listen", default=None, callback=clickopts.address, metavar="HOST:PORT",
              help="Serve Prometheus metrics of the whole proxy (every worker) at http://HOST:PORT/metrics.")
@clickopts.zk_auth_file
@click.option("--max-clients-per-address", type=click.IntRange(min=1), default=None,
              help="Connections one client address may hold (refused with -ERR max number of clients ...).")
@click.option("--max-rps-per-address", type=click.IntRange(min=1), default=None,
              help="Requests per second one client address may send (over it: -ERR max requests per second ...).")
def main(zk: str, cluster: str, listen: tuple[str, int] | None, tls_listen: tuple[str, int] | None,
         tls_cert_file: str | None, tls_key_file: str | None, tls_ca_cert_file: str | None, workers: int,
         requirepass: str | None,
         backend_password: str | None, timeout: float, max_clients: int, max_request_size: int,
         idle_timeout: float, zk_session_timeout: float, slowlog_slower_than: int, slowlog_max_len: int,
         latency_monitor_threshold: int, latency_tracking: bool, monitor_output_limit: int,
         drain_timeout: float, log_format: str, log_level: str, max_leases: int, max_leases_per_client: int,
         pubsub_output_limit: tuple[int, int, float], metrics_listen: tuple[str, int] | None,
         zk_credentials: ZkCredentials | None, max_clients_per_address: int | None,
         max_rps_per_address: int | None) -> None:
    """Serve the Redis protocol for a kvstore cluster, routing each key to its group."""
    logs.configure(log_format, log_level)
    clickopts.apply_redis_tls(click.get_current_context())
    if listen is None and tls_listen is None:
        raise click.UsageError("--listen none needs --tls-listen HOST:PORT")
    tls_files = None
    if tls_listen is not None:
        if not (tls_cert_file and tls_key_file):
            raise click.UsageError("--tls-listen needs --tls-cert-file and --tls-key-file")
        tls_files = TLSFiles(tls_cert_file, tls_key_file, tls_ca_cert_file)
        try:
            ServerTLS(tls_files)  # a file that cannot be used is reported now, not by every worker
        except TLSConfigError as exc:
            raise click.UsageError(f"--tls-listen: {exc}") from None
    elif tls_cert_file or tls_key_file or tls_ca_cert_file:
        raise click.UsageError("--tls-cert-file, --tls-key-file and --tls-ca-cert-file go with --tls-listen")
    host, port = listen if listen is not None else (None, 0)
    config = ProxyConfig(
        zk=zk, cluster=cluster, host=host or tls_listen[0], port=port, workers=workers,  # type: ignore[index]
        tls_listen=tls_listen, tls_files=tls_files,
        requirepass=requirepass or None, backend_password=backend_password or None, timeout=timeout,
        max_clients=max_clients, max_request_size=max_request_size, idle_timeout=idle_timeout,
        zk_session_timeout=zk_session_timeout, slowlog_slower_than=slowlog_slower_than,
        slowlog_max_len=slowlog_max_len, latency_monitor_threshold=latency_monitor_threshold,
        latency_tracking=latency_tracking, monitor_output_limit=monitor_output_limit,
        drain_timeout=drain_timeout, log_format=log_format, log_level=log_level, max_leases=max_leases,
        max_leases_per_client=max_leases_per_client, pubsub_output_limit=pubsub_output_limit,
        metrics_listen=metrics_listen, zk_credentials=zk_credentials,
        max_clients_per_address=max_clients_per_address, max_rps_per_address=max_rps_per_address,
    )
    if workers == 1:
        from kvstore_proxy import server

        sys.exit(server.run(config))
    from kvstore_proxy import workers as supervisor

    sys.exit(supervisor.supervise(config))
