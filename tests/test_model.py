"""The cluster model encodes to JSON and back losslessly, and rejects malformed data with a clear message."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore_cluster.model import (
    FORMAT_VERSION,
    Group,
    Groups,
    Meta,
    Migration,
    ModelError,
    SlotTable,
    assign_unowned,
    even_split,
    parse_address,
)
from kvstore_cluster.slots import SLOT_COUNT

# --- strategies ------------------------------------------------------------------------------------

group_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,10}\Z")
hosts = st.sampled_from(["127.0.0.1", "10.0.0.5", "redis-a.example", "[::1]"])
addresses = st.builds(lambda h, p: f"{h}:{p}", hosts, st.integers(1, 65535))


@st.composite
def groups_models(draw: st.DrawFn) -> Groups:
    ids = draw(st.lists(group_ids, unique=True, max_size=6))
    nodes = draw(st.lists(addresses, unique=True, min_size=len(ids) * 3, max_size=len(ids) * 3))
    out = []
    for i, gid in enumerate(ids):
        n_replicas = draw(st.integers(0, 2))
        master, *rest = nodes[i * 3 : i * 3 + 3]
        state = draw(st.sampled_from(["ok", "failing_over", "down"]))
        out.append(Group(gid, master, tuple(rest[:n_replicas]), state))
    return Groups(tuple(out))


@st.composite
def slot_tables(draw: st.DrawFn) -> SlotTable:
    ids = draw(st.lists(group_ids, unique=True, min_size=1, max_size=5))
    # Owners as a few runs, so ranges (not 16384 singletons) are what gets encoded.
    cuts = sorted(draw(st.lists(st.integers(1, SLOT_COUNT - 1), unique=True, max_size=12)))
    owners: list[str | None] = []
    for lo, hi in zip([0, *cuts], [*cuts, SLOT_COUNT], strict=True):
        owners += [draw(st.one_of(st.none(), st.sampled_from(ids)))] * (hi - lo)
    table = SlotTable.from_owners(owners)
    migrating = []
    if len(ids) > 1 and table.ranges and draw(st.booleans()):
        lo, hi, source = table.ranges[draw(st.integers(0, len(table.ranges) - 1))]
        target = next(g for g in ids if g != source)
        mid = draw(st.integers(lo, hi))
        migrating.append(Migration(lo, mid, source, target))
    return table.with_migrating(tuple(migrating))


# --- round trips -----------------------------------------------------------------------------------


@given(st.sampled_from(["cache", "datastore"]), st.floats(0, 2e9, allow_nan=False))
def test_meta_round_trips(mode: str, created_at: float) -> None:
    meta = Meta(mode=mode, created_at=created_at)
    assert Meta.decode(meta.encode()) == meta


@settings(max_examples=150)
@given(groups_models())
def test_groups_round_trip(groups: Groups) -> None:
    decoded = Groups.decode(groups.encode())
    assert decoded == groups
    assert decoded.ids() == groups.ids()  # order is kept


@settings(max_examples=150, deadline=None)
@given(slot_tables())
def test_slot_table_round_trips_and_stays_canonical(table: SlotTable) -> None:
    decoded = SlotTable.decode(table.encode())
    assert decoded == table
    assert decoded.owners() == table.owners()
    assert SlotTable.from_owners(list(decoded.owners()), decoded.migrating) == decoded


def test_encoding_carries_the_format_version() -> None:
    assert json.loads(Meta("cache", 1.0).encode())["format"] == FORMAT_VERSION
    assert json.loads(Groups().encode())["format"] == FORMAT_VERSION
    assert json.loads(SlotTable().encode())["format"] == FORMAT_VERSION


# --- rejections ------------------------------------------------------------------------------------


def _groups_json(*groups: dict, fmt: int = FORMAT_VERSION) -> str:
    return json.dumps({"format": fmt, "groups": list(groups)})


def _g(gid: str = "g1", master: str = "127.0.0.1:7001", replicas: list | None = None, state: str = "ok") -> dict:
    return {"id": gid, "master": master, "replicas": replicas or [], "state": state}


@pytest.mark.parametrize(
    ("decoder", "raw", "message"),
    [
        (Meta.decode, b"{not json", "not valid JSON"),
        (Meta.decode, b"\xff\xfe", "not valid JSON"),
        (Meta.decode, b"[1, 2]", "expected a JSON object"),
        (Meta.decode, '{"format": 99, "mode": "cache", "created_at": 1, "slot_count": 16384}',
         "unsupported format version 99"),
        (Meta.decode, '{"mode": "cache", "slot_count": 16384}', "missing field 'created_at'"),
        (Meta.decode, '{"mode": "both", "created_at": 1, "slot_count": 16384}', "mode must be one of"),
        (Meta.decode, '{"mode": "cache", "created_at": 1, "slot_count": 1024}', "slot_count must be 16384"),
        (Meta.decode, '{"mode": "cache", "created_at": true, "slot_count": 16384}', "wrong type"),
        (Groups.decode, '{"groups": {}}', "field 'groups' has the wrong type"),
        (Groups.decode, _groups_json(_g(), fmt=2), "unsupported format version 2"),
        (Groups.decode, _groups_json("g1"), "each group must be a JSON object"),
        (Groups.decode, _groups_json(_g(gid="bad/id")), "bad group name"),
        (Groups.decode, _groups_json(_g(gid="")), "bad group name"),
        (Groups.decode, _groups_json(_g(master="127.0.0.1")), "bad address '127.0.0.1'"),
        (Groups.decode, _groups_json(_g(master="127.0.0.1:0")), "port 1-65535"),
        (Groups.decode, _groups_json(_g(master="127.0.0.1:70000")), "port 1-65535"),
        (Groups.decode, _groups_json(_g(master="h:abc")), "bad address"),
        (Groups.decode, _groups_json(_g(master=7001)), "wrong type"),
        (Groups.decode, _groups_json(_g(replicas=["nope"])), "bad address 'nope'"),
        (Groups.decode, _groups_json(_g(replicas=[7002])), "replicas must be HOST:PORT strings"),
        (Groups.decode, _groups_json(_g(replicas=["127.0.0.1:7001"])), "a node appears twice"),
        (Groups.decode, _groups_json(_g(state="sleeping")), "state must be one of"),
        (Groups.decode, _groups_json(_g(), _g(master="127.0.0.1:7002")), "group id appears twice"),
        (Groups.decode, _groups_json(_g(), _g("g2", replicas=["127.0.0.1:9"], master="127.0.0.1:7001")),
         "node 127.0.0.1:7001 is in both 'g1' and 'g2'"),
        (SlotTable.decode, '{"ranges": [[0, 10, "g1"]]}', "missing field 'migrating'"),
        (SlotTable.decode, '{"ranges": [[0, 10]], "migrating": []}', "each range must be [low, high, group]"),
        (SlotTable.decode, '{"ranges": [[0, 10, "g1"], [5, 20, "g2"]], "migrating": []}', "overlaps"),
        (SlotTable.decode, '{"ranges": [[20, 30, "g1"], [0, 10, "g2"]], "migrating": []}', "out of order"),
        (SlotTable.decode, '{"ranges": [[0, 16384, "g1"]], "migrating": []}', "outside 0-16383"),
        (SlotTable.decode, '{"ranges": [[10, 5, "g1"]], "migrating": []}', "outside 0-16383"),
        (SlotTable.decode, '{"ranges": [[0, "9", "g1"]], "migrating": []}', "must be integers"),
        (SlotTable.decode, '{"ranges": [[0, 9, "g 1"]], "migrating": []}', "bad group name"),
        (SlotTable.decode, '{"ranges": [[0, 9, "g1"]], "migrating": [[0, 5, "g1"]]}',
         "each migration must be [low, high, from, to]"),
        (SlotTable.decode, '{"ranges": [[0, 9, "g1"]], "migrating": [[0, 20, "g1", "g2"]]}',
         "slot 10 migrates from 'g1' but is owned by None"),
        (SlotTable.decode, '{"ranges": [[0, 9, "g1"]], "migrating": [[0, 5, "g1", "g1"]]}',
         "from a group to itself"),
        (SlotTable.decode, '{"ranges": [[0, 9, "g1"]], "migrating": [[0, 5, "g1", "g2"], [5, 6, "g1", "g3"]]}',
         "slot 5 is in two migrations"),
        (SlotTable.decode, '{"ranges": [[0, 9, "g1"]], "migrating": [[0, true, "g1", "g2"]]}',
         "migration bounds must be integers"),
    ],
)
def test_malformed_data_is_rejected_with_a_clear_message(decoder, raw, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError) as info:
        decoder(raw)
    assert message in str(info.value)


def test_constructors_validate_like_decoders() -> None:
    with pytest.raises(ModelError, match="a node appears twice"):
        Group("g1", "127.0.0.1:1", ("127.0.0.1:1",))
    with pytest.raises(ModelError, match="bad address"):
        Group("g1", "localhost")
    with pytest.raises(ModelError, match="mode must be one of"):
        Meta("memory", 0.0)
    with pytest.raises(ModelError, match="expected 16384 owners"):
        SlotTable.from_owners(["g1"] * 10)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:6379", ("127.0.0.1", 6379)),
        ("redis.example:1", ("redis.example", 1)),
        ("[::1]:7000", ("::1", 7000)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_address_accepts_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "6379", ":6379", "host:", "host:0", "host:65536", "host:-1", "host:6a"])
def test_parse_address_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="bad address"):
        parse_address(text)


# --- slot assignment ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16384])
def test_even_split_covers_every_slot_with_sizes_within_one(n: int) -> None:
    ids = [f"g{i}" for i in range(n)]
    table = SlotTable(tuple(even_split(ids)))
    assert table.unowned() == []
    sizes = table.counts().values()
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=100, deadline=None)
@given(slot_tables(), st.lists(group_ids, unique=True, min_size=1, max_size=6))
def test_assign_unowned_only_fills_unowned_slots_and_leaves_none(table: SlotTable, ids: list[str]) -> None:
    result = assign_unowned(table.with_migrating(()), ids)
    assert result.unowned() == []
    for before, after in zip(table.owners(), result.owners(), strict=True):
        if before is not None:
            assert after == before
        else:
            assert after in ids


def test_assign_unowned_evens_out_counts_on_an_empty_table() -> None:
    result = assign_unowned(SlotTable(), ["a", "b", "c"])
    assert sorted(result.counts().values()) == [5461, 5461, 5462]


def test_assign_unowned_needs_a_group() -> None:
    with pytest.raises(ModelError, match="no groups"):
        assign_unowned(SlotTable(), [])
