"""The ``kvstore-sentinel`` command line."""

from __future__ import annotations

import asyncio
import sys

import click

from kvstore_cluster import clickopts, logs
from kvstore_cluster.paths import check_name
from kvstore_cluster.store import StoreError
from kvstore_cluster.zkauth import ZkCredentials


def _name(kind: str):  # type: ignore[no-untyped-def]
    def check(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
        if value is None or value == "":
            return value
        try:
            return check_name(kind, value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return check


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--zk", envvar="KVSTORE_ZK", default="127.0.0.1:2181", help="ZooKeeper hosts (env KVSTORE_ZK).")
@click.option("--cluster", envvar="KVSTORE_CLUSTER", default="default", callback=_name("cluster"),
              help="Cluster name (env KVSTORE_CLUSTER).")
@click.option("--interval", type=click.FloatRange(min=0.01), default=0.5, help="Seconds between probe rounds.")
@click.option("--down-after", type=click.FloatRange(min=0.05), default=2.0,
              help="Seconds without a successful probe before a node is down.")
@click.option("--quorum", type=click.IntRange(min=1), default=1,
              help="How many sentinels must see a node down before the leader acts.")
@click.option("--id", "sentinel_id", default="", callback=_name("sentinel"),
              help="This sentinel's id in ZooKeeper (default: host-pid).")
@click.option("--auto-rejoin/--no-auto-rejoin", default=False,
              help="Cache mode: flush a recovered node and give its group slots again, without the admin.")
@click.option("--zk-session-timeout", type=click.FloatRange(min=1.0), default=6.0,
              help="ZooKeeper session timeout in seconds; a dead leader is replaced after about this long.")
@click.option("--redis-password", envvar="KVSTORE_REDIS_PASSWORD", default=None,
              help="Password of the Redis nodes (env KVSTORE_REDIS_PASSWORD).")
@click.option("--metrics-listen", default=None, callback=clickopts.address, metavar="HOST:PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics.")
@clickopts.zk_auth_file
@clickopts.redis_tls
@click.option("--log-format", type=click.Choice(logs.FORMATS), default="console")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def main(zk: str, cluster: str, interval: float, down_after: float, quorum: int, sentinel_id: str,
         auto_rejoin: bool, zk_session_timeout: float, redis_password: str | None,
         metrics_listen: tuple[str, int] | None, zk_credentials: ZkCredentials | None, log_format: str,
         log_level: str) -> None:
    """Watch every Redis node of a kvstore cluster and repair the cluster when a master fails."""
    from kvstore_sentinel.service import Config, Sentinel, StartupError

    logs.configure(log_format, log_level)
    clickopts.apply_redis_tls(click.get_current_context())
    config = Config(zk=zk, cluster=cluster, interval=interval, down_after=down_after, quorum=quorum,
                    sentinel_id=sentinel_id, auto_rejoin=auto_rejoin, zk_session_timeout=zk_session_timeout,
                    password=redis_password, metrics_listen=metrics_listen, zk_credentials=zk_credentials)
    try:
        asyncio.run(Sentinel(config).run())
    except (StoreError, StartupError) as exc:
        click.echo(f"kvstore-sentinel: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass
