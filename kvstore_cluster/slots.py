"""The slot of a key and slot-range parsing.

The slot function is compiled (keyslot.pyx): ``key_slot`` is CRC16 mod 16384 with Redis Cluster
hash tags, as ``CLUSTER KEYSLOT``; a ``Slotter`` adds key rules (prefix -> tag) and is what the
proxy's request path calls from C.
"""

from __future__ import annotations

try:
    from kvstore_cluster.keyslot import SLOT_COUNT, Slotter, key_slot
except ImportError as exc:  # a checkout used without installing it
    raise ImportError("kvstore's compiled modules are not built: run 'make test' or pip install -e . "
                      "(README: Building from source)") from exc

__all__ = ["SLOT_COUNT", "Slotter", "format_slot_ranges", "key_slot", "merge_ranges", "parse_slot_ranges",
           "slots_to_ranges"]


def parse_slot_ranges(text: str) -> list[tuple[int, int]]:
    """Parse ``"0-999,2000,3000-3010"`` into sorted, merged inclusive ranges.

    Raises ``ValueError`` with a readable message on malformed input.
    """
    if not text or not text.strip():
        raise ValueError("empty slot list")
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise ValueError(f"bad slot range {part!r}: expected N or N-M") from None
        if not (0 <= lo <= hi < SLOT_COUNT):
            raise ValueError(f"bad slot range {part!r}: slots are 0-{SLOT_COUNT - 1}, low <= high")
        ranges.append((lo, hi))
    return merge_ranges(ranges)


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort inclusive ranges and merge those that overlap or touch."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def format_slot_ranges(ranges: list[tuple[int, int]]) -> str:
    """Inverse of :func:`parse_slot_ranges`."""
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def slots_to_ranges(slots: list[int] | set[int]) -> list[tuple[int, int]]:
    """Compress a collection of slot numbers into inclusive ranges."""
    return merge_ranges([(s, s) for s in slots])
