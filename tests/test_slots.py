"""The slot function matches Redis Cluster's CLUSTER KEYSLOT, key rules map prefixes to tags, and slot-range
parsing is strict."""

from __future__ import annotations

import random
from binascii import crc_hqx

import pytest
import redis

from kvstore_cluster.slots import (
    SLOT_COUNT,
    Slotter,
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


# Twenty rules, as an application's would be; none matches a key of _random_keys (no "~" in them).
RULES = [(b"~celery" + bytes([i]), b"q%d" % i) for i in range(10)] + [
    (b"~rq:", b"rq"), (b"~rq:job:", b"jobs"), (b"~_kombu.binding.", b"kombu"), (b"~unacked", b"kombu"),
    (b"~{x}", b"x"), (b"~\x00\xff", b""), (b"~a", b"A"), (b"~ab", b"AB"), (b"~abc", b"ABC"), (b"~b", b"{b}")]


def test_slot_hash_matches_redis_cluster_keyslot(redis_factory) -> None:
    """Thousands of random, tagged, empty-tagged and binary keys hash as CLUSTER KEYSLOT says, with
    and without key rules that match none of them."""
    node = redis_factory.start(extra={"cluster-enabled": "yes", "cluster-config-file": "nodes.conf"})
    client = redis.Redis(port=node.port)
    keys = _random_keys(4000)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.execute_command("CLUSTER", "KEYSLOT", key)
    expected = pipe.execute()
    for slot in (key_slot, Slotter().key_slot, Slotter(RULES).key_slot):
        mismatches = [(k, e, slot(k)) for k, e in zip(keys, expected, strict=True) if slot(k) != e]
        assert mismatches == []
    assert all(0 <= key_slot(k) < SLOT_COUNT for k in keys)


def test_key_rules_hash_a_prefix_as_its_tag_and_the_longest_prefix_wins() -> None:
    rules = Slotter(RULES)
    assert rules.key_slot(b"~rq:queue:default") == key_slot(b"rq")
    assert rules.key_slot(b"~rq:job:42") == key_slot(b"jobs")  # longer prefix
    assert rules.key_slot(b"~rq:jo") == key_slot(b"rq")
    assert rules.key_slot(b"~rq:") == key_slot(b"rq")  # the prefix itself
    assert rules.key_slot(b"~rq") == key_slot(b"~rq")  # shorter than every prefix: no rule
    assert rules.key_slot(b"~celery\x03") == key_slot(b"q3")
    assert rules.key_slot(b"~unacked_index") == rules.key_slot(b"~_kombu.binding.celery") == key_slot(b"kombu")
    assert rules.key_slot(b"~{x}{y}") == key_slot(b"x")
    assert rules.key_slot(b"~rq:{other}") == key_slot(b"rq")  # a rule wins over the key's own hash tag
    assert rules.key_slot(b"{~rq:}x") == key_slot(b"~rq:")  # not a prefix: Redis's hash tag
    assert rules.key_slot(b"~abcd") == key_slot(b"ABC") and rules.key_slot(b"~ab") == key_slot(b"AB")
    assert rules.key_slot(b"~az") == key_slot(b"A")
    assert rules.key_slot(b"~b{c}") == crc_hqx(b"{b}", 0) & 0x3FFF  # the tag is hashed as it is, braces too
    assert rules.key_slot(b"~\x00\xffz") == 0  # an empty tag: CRC16 of nothing
    assert rules.key_slot(b"") == key_slot(b"") == 0
    assert len(rules.rules) == 20 and Slotter().rules == ()


@pytest.mark.parametrize(("rules", "error"), [
    ([(b"", b"t")], ValueError), ([(b"a", b"t"), (b"a", b"u")], ValueError), ([("a", b"t")], TypeError),
    ([(b"a", "t")], TypeError), ([(b"a",)], ValueError),
])
def test_key_rules_refuse_garbage(rules, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        Slotter(rules)


def test_parse_slot_ranges_merges_and_sorts() -> None:
    assert parse_slot_ranges("10-20, 0-5,6,21-30,16383") == [(0, 6), (10, 30), (16383, 16383)]
    assert format_slot_ranges([(0, 6), (9, 9)]) == "0-6,9"
    assert merge_ranges([(5, 9), (0, 4)]) == [(0, 9)]
    assert slots_to_ranges({3, 1, 2, 7}) == [(1, 3), (7, 7)]


@pytest.mark.parametrize("text", ["", " ", "a", "1-", "-1", "5-3", "16384", "0-16384", "1,,2", "1-2-3"])
def test_parse_slot_ranges_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="slot"):
        parse_slot_ranges(text)
