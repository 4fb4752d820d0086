"""structlog setup shared by every kvstore program: readable on a terminal, JSON on request."""

from __future__ import annotations

import logging
import sys

import structlog

FORMATS = ("console", "json")


def configure(fmt: str = "console", level: str = "info") -> None:
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # kazoo logs through the standard library; keep its noise at warnings and above.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
