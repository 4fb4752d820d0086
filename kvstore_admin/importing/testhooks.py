"""Test hook: the import exits at once (no cleanup, as if killed) at a named point, so tests can resume from there.

``KVSTORE_TEST_IMPORT_CRASH=<point>[:<n>]`` exits with code 86 the n-th time (default: first) the
import reaches ``point``: ``snapshot`` (after the first keys are restored), ``streaming`` (after a
batch of the stream is applied), ``cross-group`` (after the first group of a command spanning
groups committed).
"""

from __future__ import annotations

import os

import structlog

ENV = "KVSTORE_TEST_IMPORT_CRASH"
EXIT_CODE = 86
_seen: dict[str, int] = {}


def crash_point(point: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] >= (int(nth) if nth.isdigit() else 1):
        structlog.get_logger("kvstore.admin.import").warning("test_crash_hook", point=point)
        os._exit(EXIT_CODE)
