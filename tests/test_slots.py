"""The slot hash matches Redis Cluster's CLUSTER KEYSLOT, and slot-range parsing is strict."""

from __future__ import annotations

import random

import pytest
import redis

from kvstore_cluster.slots import (
    SLOT_COUNT,
    format_slot_ranges,
    key_slot,
    merge_ranges,
    parse_slot_ranges,
    slots_to_ranges,
)


@pytest.mark.parametrize(
    ("key", "slot"),
    [
        (b"", 0),
        (b"123456789", 12739),  # the CRC16/XMODEM check value, mod 16384
        (b"foo", 12182),
        (b"{user1000}.following", key_slot(b"user1000")),
        (b"foo{}{bar}", key_slot(b"foo{}{bar}")),  # empty first tag: whole key hashed
        (b"foo{{bar}}zap", key_slot(b"{bar")),
        (b"foo{bar}{zap}", key_slot(b"bar")),
    ],
)
def test_known_slots(key: bytes, slot: int) -> None:
    assert key_slot(key) == slot


def _random_keys(n: int) -> list[bytes]:
    rng = random.Random(1234)
    alphabet = b"abc{}xyz\x00\xff\r\n "
    keys: list[bytes] = [b"", b"{", b"}", b"{}", b"}{", b"{a", b"a}", b"{}a{b}", b"a{b}{c}", b"{{}}"]
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:
            keys.append(bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 12))))
        elif kind < 0.7:
            keys.append(rng.randbytes(rng.randint(0, 40)))
        else:
            tag = bytes(rng.choice(b"abcdef") for _ in range(rng.randint(0, 4)))
            keys.append(b"pre" + rng.choice([b"", b"x"]) + b"{" + tag + b"}" + rng.randbytes(3))
    return keys


def test_slot_hash_matches_redis_cluster_keyslot(redis_factory) -> None:
    """Thousands of random, tagged, empty-tagged and binary keys hash as CLUSTER KEYSLOT says."""
    node = redis_factory.start(extra={"cluster-enabled": "yes", "cluster-config-file": "nodes.conf"})
    client = redis.Redis(port=node.port)
    keys = _random_keys(4000)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.execute_command("CLUSTER", "KEYSLOT", key)
    expected = pipe.execute()
    mismatches = [(k, e, key_slot(k)) for k, e in zip(keys, expected, strict=True) if key_slot(k) != e]
    assert mismatches == []
    assert all(0 <= key_slot(k) < SLOT_COUNT for k in keys)


def test_parse_slot_ranges_merges_and_sorts() -> None:
    assert parse_slot_ranges("10-20, 0-5,6,21-30,16383") == [(0, 6), (10, 30), (16383, 16383)]
    assert format_slot_ranges([(0, 6), (9, 9)]) == "0-6,9"
    assert merge_ranges([(5, 9), (0, 4)]) == [(0, 9)]
    assert slots_to_ranges({3, 1, 2, 7}) == [(1, 3), (7, 7)]


@pytest.mark.parametrize("text", ["", " ", "a", "1-", "-1", "5-3", "16384", "0-16384", "1,,2", "1-2-3"])
def test_parse_slot_ranges_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="slot"):
        parse_slot_ranges(text)
