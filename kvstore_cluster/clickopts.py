"""Command-line option parsing the three programs share (click callbacks)."""

from __future__ import annotations

from typing import Any

import click

from kvstore_cluster import tls
from kvstore_cluster.codec import parse_address
from kvstore_cluster.zkauth import ENV, ZkCredentials, load_credentials


def address(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    """``HOST:PORT`` as ``(host, port)`` for an option's callback; an absent option stays None."""
    if value is None:
        return None
    try:
        return parse_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _zk_credentials(_ctx: click.Context, _param: click.Parameter, value: str | None) -> ZkCredentials | None:
    try:
        return load_credentials(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


zk_auth_file = click.option(
    "--zk-auth-file", "zk_credentials", default=None, metavar="FILE", callback=_zk_credentials,
    help=f"A file holding this process's ZooKeeper credentials, user:password (default: env {ENV}); "
         "needed when the cluster is secured with ZooKeeper ACLs.")


def _redis_tls_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta.setdefault("redis_tls", {})[param.name] = value


def redis_tls(f: Any) -> Any:
    """``--redis-tls-ca-cert-file``, ``--redis-tls-cert-file``, ``--redis-tls-key-file``: how this process
    connects to nodes of groups that speak TLS (kvstore_cluster/tls.py); applied by ``apply_redis_tls``."""
    for name, env, text in reversed([
        ("ca", tls.ENV_CA, "The CA that signed the Redis nodes' certificates (groups added with --tls)"),
        ("cert", tls.ENV_CERT, "This process's client certificate for Redis nodes (their tls-auth-clients)"),
        ("key", tls.ENV_KEY, "The key of --redis-tls-cert-file"),
    ]):
        flag = f"--redis-tls-{'ca-cert' if name == 'ca' else name}-file"
        f = click.option(flag, name, envvar=env, default=None, metavar="FILE", expose_value=False,
                         callback=_redis_tls_file, help=f"{text}; env {env}.")(f)
    return f


def apply_redis_tls(ctx: click.Context) -> None:
    """Configure tls.py with the files given; a file that cannot be used is a usage error."""
    files = ctx.meta.get("redis_tls", {})
    try:
        tls.configure(files.get("ca"), files.get("cert"), files.get("key"))
    except tls.TLSConfigError as exc:
        raise click.UsageError(f"Redis TLS: {exc}") from None
