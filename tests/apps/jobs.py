"""Job functions the task-queue tests enqueue (importable by name, as the workers need)."""

from __future__ import annotations


def add(a: int, b: int) -> int:
    return a + b


def fail() -> None:
    raise ValueError("this job fails on purpose")
