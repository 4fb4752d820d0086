"""The slot hash (CRC16 mod 16384 with Redis Cluster hash tags) and slot-range parsing."""

from __future__ import annotations

from binascii import crc_hqx

SLOT_COUNT = 16384


def key_slot(key: bytes) -> int:
    """Return the slot of ``key`` exactly as Redis Cluster's ``CLUSTER KEYSLOT`` does."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        # An empty tag ("{}") hashes the whole key, as in Redis Cluster.
        if end > start + 1:
            key = key[start + 1 : end]
    return crc_hqx(key, 0) & 0x3FFF


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
