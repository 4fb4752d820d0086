"""Every record that crosses a process boundary round-trips through its JSON and rejects malformed input clearly."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore_cluster.codec import FORMAT_VERSION, ModelError
from kvstore_cluster.failover_record import STEPS, FailoverRecord
from kvstore_cluster.model import Migration
from kvstore_cluster.proxy_registration import MIGRATION, PROTOCOLS, ProxyRegistration
from kvstore_cluster.reshard_state import PHASES, ReshardState
from kvstore_cluster.sentinel_view import ProbeResult, SentinelView
from kvstore_cluster.slots import SLOT_COUNT

group_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,10}\Z")
addresses = st.builds(lambda h, p: f"{h}:{p}", st.sampled_from(["127.0.0.1", "10.0.0.5", "redis.example"]),
                      st.integers(1, 65535))
times = st.floats(0, 2e9, allow_nan=False).map(lambda t: round(t, 3))


@st.composite
def migrations(draw: st.DrawFn) -> Migration:
    lo = draw(st.integers(0, SLOT_COUNT - 1))
    hi = draw(st.integers(lo, SLOT_COUNT - 1))
    source, target = draw(st.lists(group_ids, min_size=2, max_size=2, unique=True))
    return Migration(lo, hi, source, target)


@st.composite
def reshard_states(draw: st.DrawFn) -> ReshardState:
    steps = draw(st.lists(st.lists(migrations(), min_size=1, max_size=3).map(tuple), min_size=1, max_size=4))
    request = draw(st.dictionaries(st.sampled_from(["slots", "to", "drain", "n", "flag"]),
                                   st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8))))
    return ReshardState(
        request={**request, "command": draw(st.sampled_from(["reshard", "rebalance"]))},
        steps=tuple(steps), step=draw(st.integers(0, len(steps) - 1)), phase=draw(st.sampled_from(PHASES)),
        version=draw(st.integers(-1, 10**6)), no_data=draw(st.booleans()), aborting=draw(st.booleans()),
        keys_moved=draw(st.integers(0, 10**9)), started_at=draw(times),
    )


@st.composite
def failover_records(draw: st.DrawFn) -> FailoverRecord:
    kind = draw(st.sampled_from(sorted(STEPS)))
    old, candidate = draw(st.lists(addresses, min_size=2, max_size=2, unique=True))
    return FailoverRecord(kind, draw(group_ids), old, candidate, draw(st.sampled_from(STEPS[kind])),
                          draw(st.text(max_size=10)), draw(times))


@st.composite
def probe_results(draw: st.DrawFn, address: str) -> ProbeResult:
    if not draw(st.booleans()):
        return ProbeResult(address, False, draw(times), error=draw(st.text(max_size=20)))
    role = draw(st.sampled_from(["master", "replica"]))
    return ProbeResult(address, True, draw(times), role=role, offset=draw(st.integers(0, 10**12)),
                       master=draw(addresses) if role == "replica" else None,
                       link_up=draw(st.booleans()) if role == "replica" else None)


@st.composite
def sentinel_views(draw: st.DrawFn) -> SentinelView:
    nodes = draw(st.lists(addresses, unique=True, max_size=5))
    return SentinelView(
        id=draw(group_ids), time=draw(times), leader=draw(st.booleans()),
        down={a: draw(times) for a in nodes if draw(st.booleans())},
        nodes={a: draw(probe_results(a)) for a in nodes if draw(st.booleans())},
    )


@st.composite
def registrations(draw: st.DrawFn) -> ProxyRegistration:
    return ProxyRegistration(
        address=draw(addresses), pid=draw(st.integers(1, 2**22)), started_at=draw(times),
        slots_version=draw(st.integers(-1, 10**6)), groups_version=draw(st.integers(-1, 10**6)),
        fenced=draw(st.booleans()),
        protocols=draw(st.dictionaries(st.sampled_from(["migration", "key_rules", "x"]), st.integers(0, 9))),
    )


# --- round trips -----------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(reshard_states())
def test_reshard_state_round_trips(state: ReshardState) -> None:
    assert ReshardState.decode(state.encode()) == state


@settings(max_examples=100)
@given(failover_records())
def test_failover_record_round_trips(record: FailoverRecord) -> None:
    assert FailoverRecord.decode(record.encode()) == record


@settings(max_examples=100)
@given(sentinel_views())
def test_sentinel_view_round_trips(view: SentinelView) -> None:
    assert SentinelView.decode(view.encode()) == view


@settings(max_examples=100)
@given(registrations())
def test_proxy_registration_round_trips(reg: ProxyRegistration) -> None:
    assert ProxyRegistration.decode(reg.encode()) == reg


def test_every_record_carries_the_format_version() -> None:
    for record in (ReshardState({"command": "reshard"}, ((Migration(0, 1, "g1", "g2"),),)),
                   FailoverRecord("failover", "g1", "h:1", "h:2", "promote", "s"),
                   SentinelView("s", 1.0, False),
                   ProxyRegistration("h:1", 1, 1.0, 0, 0, False)):
        assert json.loads(record.encode())["format"] == FORMAT_VERSION


# --- rejections ------------------------------------------------------------------------------------


def _reshard(**changes: object) -> str:
    obj: dict[str, object] = {"request": {"command": "reshard", "to": "g2"}, "steps": [[[0, 9, "g1", "g2"]]],
                              "step": 0, "phase": "marked", "version": 3, "no_data": False, "aborting": False,
                              "keys_moved": 0, "started_at": 1.5}
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not ...})


def _failover(**changes: object) -> str:
    obj: dict[str, object] = {"kind": "failover", "group": "g1", "old_master": "h:1", "candidate": "h:2",
                              "step": "promote", "by": "s1", "started_at": 1.0}
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not ...})


def _view(**changes: object) -> str:
    obj: dict[str, object] = {"id": "s1", "time": 1.0, "leader": True, "down": {"h:1": 0.5},
                              "nodes": {"h:1": {"ok": False, "at": 0.9, "error": "refused"}}}
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not ...})


def _proxy(**changes: object) -> str:
    obj: dict[str, object] = {"address": "h:7000", "pid": 7, "started_at": 1.0, "slots_version": 2,
                              "groups_version": 1, "fenced": False, "protocols": {"migration": 1}}
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not ...})


@pytest.mark.parametrize(
    ("decoder", "raw", "message"),
    [
        (ReshardState.decode, b"{nope", "reshard: not valid JSON"),
        (ReshardState.decode, b"[]", "reshard: expected a JSON object"),
        (ReshardState.decode, _reshard(format=2), "unsupported format version 2"),
        (ReshardState.decode, _reshard(steps=...), "reshard: missing field 'steps'"),
        (ReshardState.decode, _reshard(steps=[]), "at least one step"),
        (ReshardState.decode, _reshard(steps=[[]]), "every step a migration"),
        (ReshardState.decode, _reshard(steps=[[[0, 9, "g1"]]]), "each migration must be [low, high, from, to]"),
        (ReshardState.decode, _reshard(steps=[[[0, 16384, "g1", "g2"]]]), "outside 0-16383"),
        (ReshardState.decode, _reshard(steps=[[[0, 9, "g1", "g1"]]]), "from a group to itself"),
        (ReshardState.decode, _reshard(steps=[[[0, 9, "g/1", "g2"]]]), "bad group name"),
        (ReshardState.decode, _reshard(steps=[{"a": 1}]), "each step must be a list"),
        (ReshardState.decode, _reshard(step=1), "step 1 is not one of its 1 steps"),
        (ReshardState.decode, _reshard(step="0"), "field 'step' has the wrong type"),
        (ReshardState.decode, _reshard(phase="done"), "phase must be one of"),
        (ReshardState.decode, _reshard(no_data=1), "field 'no_data' has the wrong type"),
        (ReshardState.decode, _reshard(keys_moved=-1), "cannot be negative"),
        (ReshardState.decode, _reshard(request={"to": "g2"}), "request has no command"),
        (ReshardState.decode, _reshard(request={"command": "reshard", "x": [1]}), "request field 'x' must be"),
        (ReshardState.decode, _reshard(started_at=...), "missing field 'started_at'"),
        (FailoverRecord.decode, b"\xff", "failover record: not valid JSON"),
        (FailoverRecord.decode, _failover(kind="oops"), "kind must be one of failover, switchover"),
        (FailoverRecord.decode, _failover(step="pause"), "a failover's step is one of promote, repoint, commit"),
        (FailoverRecord.decode, _failover(kind="switchover", step="repoint"), "a switchover's step is one of"),
        (FailoverRecord.decode, _failover(candidate="nowhere"), "bad address 'nowhere'"),
        (FailoverRecord.decode, _failover(candidate="h:1"), "the candidate is the old master"),
        (FailoverRecord.decode, _failover(group="g 1"), "bad group name"),
        (FailoverRecord.decode, _failover(by=...), "missing field 'by'"),
        (FailoverRecord.decode, _failover(started_at="now"), "field 'started_at' has the wrong type"),
        (SentinelView.decode, b'"a view"', "sentinel view: expected a JSON object"),
        (SentinelView.decode, _view(down=[]), "field 'down' has the wrong type"),
        (SentinelView.decode, _view(down={"h:1": "yesterday"}), "down['h:1'] has the wrong type"),
        (SentinelView.decode, _view(down={"nohost": 1.0}), "bad address 'nohost'"),
        (SentinelView.decode, _view(leader="yes"), "field 'leader' has the wrong type"),
        (SentinelView.decode, _view(nodes={"h:1": []}), "probe of h:1: expected a JSON object"),
        (SentinelView.decode, _view(nodes={"h:1": {"ok": True, "at": 1, "role": "slave"}}), "role must be one of"),
        (SentinelView.decode, _view(nodes={"h:1": {"ok": True, "at": 1, "offset": "7"}}), "'offset' has the wrong"),
        (SentinelView.decode, _view(nodes={"h:1": {"at": 1}}), "missing field 'ok'"),
        (SentinelView.decode, _view(nodes={"h:1": {"ok": True, "at": 1, "master": "x"}}), "bad address 'x'"),
        (ProxyRegistration.decode, b"{", "proxy registration: not valid JSON"),
        (ProxyRegistration.decode, _proxy(pid=...), "missing field 'pid'"),
        (ProxyRegistration.decode, _proxy(address="7000"), "bad address '7000'"),
        (ProxyRegistration.decode, _proxy(slots_version=None), "field 'slots_version' has the wrong type"),
        (ProxyRegistration.decode, _proxy(fenced="no"), "field 'fenced' has the wrong type"),
        (ProxyRegistration.decode, _proxy(protocols=[1]), "field 'protocols' has the wrong type"),
        (ProxyRegistration.decode, _proxy(protocols={"migration": "1"}), "protocols must map names to integer"),
        (ProxyRegistration.decode, _proxy(protocols={"migration": True}), "protocols must map names to integer"),
    ],
)
def test_malformed_records_are_rejected_with_a_clear_message(decoder, raw, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError) as info:
        decoder(raw)
    assert message in str(info.value)


# --- what the records say ------------------------------------------------------------------------------


@pytest.mark.parametrize(("phase", "step", "expected"), [
    ("pending", [Migration(0, 99, "g1", "g2")], False),
    ("marked", [Migration(0, 99, "g1", "g2")], False),
    ("moving", [Migration(0, 99, "g1", "g2")], True),
    ("committed", [Migration(0, 99, "g1", "g2")], True),
    ("moving", [Migration(0, 99, "g1", "g2"), Migration(200, 299, "g3", "g2")], True),
    # The record still describes the previous step while the table already has the next marks.
    ("committed", [Migration(100, 199, "g1", "g2")], False),
    ("moving", [Migration(0, 99, "g2", "g1")], False),
])
def test_keys_may_move_only_for_the_migrations_of_a_released_step(phase: str, step: list[Migration],
                                                                   expected: bool) -> None:
    state = ReshardState({"command": "reshard"}, (tuple(step),), phase=phase)
    assert state.keys_may_move([Migration(0, 99, "g1", "g2")]) is expected


def test_a_proxy_speaks_a_protocol_at_this_release_s_version_or_later() -> None:
    reg = ProxyRegistration("h:1", 1, 1.0, 0, 0, False)
    assert reg.protocols == PROTOCOLS and reg.speaks(MIGRATION)
    older = ProxyRegistration("h:1", 1, 1.0, 0, 0, False, protocols={})
    assert not older.speaks(MIGRATION)
    newer = ProxyRegistration("h:1", 1, 1.0, 0, 0, False, protocols={MIGRATION: PROTOCOLS[MIGRATION] + 1})
    assert newer.speaks(MIGRATION)


def test_constructors_validate_like_decoders() -> None:
    with pytest.raises(ModelError, match="phase must be one of"):
        ReshardState({"command": "reshard"}, ((Migration(0, 1, "g1", "g2"),),), phase="later")
    with pytest.raises(ModelError, match="from a group to itself"):
        Migration(0, 1, "g1", "g1")
    with pytest.raises(ModelError, match="a switchover's step"):
        FailoverRecord("switchover", "g1", "h:1", "h:2", "commit", "admin")
    with pytest.raises(ModelError, match="role must be one of"):
        ProbeResult("h:1", True, 1.0, role="slave")
    with pytest.raises(ModelError, match="bad address"):
        ProxyRegistration("nowhere", 1, 1.0, 0, 0, False)
