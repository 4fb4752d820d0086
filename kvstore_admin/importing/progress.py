"""What ``import`` shows while it works, on stderr: a bar of keys copied (keys/s), then the lag while it follows."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

FOLLOW_EVERY = 1.0  # seconds between status lines on a terminal
FOLLOW_EVERY_PIPE = 30.0  # ... and when stderr is a file or a pipe


class Progress:
    """No output (``--json``, tests); the base of :class:`Bar`."""

    def message(self, text: str) -> None: ...

    def rdb(self, received: int) -> None: ...

    def snapshot_start(self, total: int) -> None: ...

    def snapshot(self, keys: int) -> None: ...

    def snapshot_done(self) -> None: ...

    def follow(self, commands: int, lag: int, offset: int) -> None: ...

    def close(self) -> None: ...


class Bar(Progress):
    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.started = 0.0
        self.shown = 0
        self.keys = 0
        self.last_rdb = 0.0
        self.last_follow = 0.0
        self.last_commands = 0
        self.follow_line = False

    def _end_line(self) -> None:
        if self.follow_line:
            click.echo("", err=True)
            self.follow_line = False

    def message(self, text: str) -> None:
        self._end_line()
        click.echo(text, err=True)

    def rdb(self, received: int) -> None:
        now = time.monotonic()
        if self.tty and now - self.last_rdb >= 0.5:
            self.last_rdb = now
            click.echo(f"\rreceiving the snapshot: {received / 1e6:,.1f} MB", err=True, nl=False)
            self.follow_line = True

    def snapshot_start(self, total: int) -> None:
        self._end_line()
        self.started = time.monotonic()
        self.bar = click.progressbar(length=max(total, 1), label="copying keys", file=sys.stderr, show_pos=True,
                                     item_show_func=self._rate)
        self.bar.__enter__()

    def _rate(self, _: Any) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return f"{self.keys / elapsed:,.0f} keys/s"

    def snapshot(self, keys: int) -> None:
        if self.bar is None:
            return
        self.keys = keys
        step = min(keys, self.bar.length) - self.shown
        if step > 0:
            self.bar.update(step, current_item=keys)
            self.shown += step

    def snapshot_done(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def follow(self, commands: int, lag: int, offset: int) -> None:
        now = time.monotonic()
        every = FOLLOW_EVERY if self.tty else FOLLOW_EVERY_PIPE
        if now - self.last_follow < every:
            return
        rate = (commands - self.last_commands) / (now - self.last_follow) if self.last_follow else 0.0
        self.last_follow, self.last_commands = now, commands
        text = f"following: {commands:,} commands applied, {rate:,.0f}/s, lag {lag:,} bytes (offset {offset:,})"
        if self.tty:
            click.echo(f"\r{text}\x1b[K", err=True, nl=False)
            self.follow_line = True
        else:
            click.echo(text, err=True)

    def close(self) -> None:
        self.snapshot_done()
        self._end_line()
