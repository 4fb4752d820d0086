# The Python-visible interface of the compiled slot function (keyslot.pyx), for type checkers.

from collections.abc import Iterable

SLOT_COUNT: int

def key_slot(key: bytes) -> int: ...

class Slotter:
    rules: tuple[tuple[bytes, bytes], ...]
    def __init__(self, rules: Iterable[tuple[bytes, bytes]] = ...) -> None: ...
    def key_slot(self, key: bytes) -> int: ...
