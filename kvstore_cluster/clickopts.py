"""Command-line option parsing the three programs share (click callbacks)."""

from __future__ import annotations

import click

from kvstore_cluster.codec import parse_address


def address(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    """``HOST:PORT`` as ``(host, port)`` for an option's callback; an absent option stays None."""
    if value is None:
        return None
    try:
        return parse_address(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
