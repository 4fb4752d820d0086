"""Command-line option parsing the three programs share (click callbacks)."""

from __future__ import annotations

import click

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
