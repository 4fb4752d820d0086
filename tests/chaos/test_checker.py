"""The checker and the contracts on synthetic histories: each anomaly is reported, a clean history passes."""

from __future__ import annotations

import itertools
import math
import socket
import time

import pytest

from chaos.checker import (
    DIVERGED,
    LOST,
    MISPLACED,
    UNEXPECTED,
    FinalState,
    GroupData,
    NodeData,
    check,
    slot_of,
)
from chaos.contracts import FaultRecord, lossy_crash, violations
from chaos.faultlink import FaultLink
from chaos.history import (
    FAILED,
    GET,
    GETC,
    GETR,
    INCR,
    LRANGE,
    MINCR,
    OK,
    QPOP,
    QPUSH,
    REG,
    RPUSH,
    SET,
    UNKNOWN,
    History,
    Op,
    classify_error,
)

_ids = itertools.count(1)


def op(kind: str, key: str, value: str | None = None, outcome: str = OK, start: float = 0.0,
       end: float | None = None, result: object = None, client: int = 0) -> Op:
    return Op(next(_ids), client, kind, key, value, start, start + 0.01 if end is None else end, outcome, result)


def owner(slot: int) -> str:
    return "g1" if slot < 8192 else "g2"


def key_in(group: str, prefix: str, n: int = 0) -> str:
    """The ``n``-th key ``<prefix><i>`` whose slot ``group`` owns."""
    found = [k for k in (f"{prefix}{i}" for i in range(10_000)) if owner(slot_of(k)) == group]
    return found[n]


def state(keys: dict[str, object], replicas: int = 1, replica_keys: dict[str, object] | None = None) -> FinalState:
    """Keys placed in the group that owns their slot; each replica a copy unless ``replica_keys``."""
    groups = {}
    for gid in ("g1", "g2"):
        mine = {k: v for k, v in keys.items() if owner(slot_of(k)) == gid}
        reps = [NodeData(f"{gid}-r{i}", dict(mine) if replica_keys is None else dict(replica_keys))
                for i in range(replicas)]
        groups[gid] = GroupData(gid, "ok", NodeData(f"{gid}-m", mine), reps)
    return FinalState.simple(groups, owner)


def clean_history() -> tuple[History, dict[str, object]]:
    """A history of every op kind and the final state that matches it exactly."""
    ops = [
        op(SET, "S:0:1", "0.1", start=1.0),
        op(RPUSH, "L:1", "0.2", start=2.0),
        op(RPUSH, "L:1", "1.1", start=2.5, client=1),
        op(RPUSH, "L:1", "0.3", start=3.0),
        op(INCR, "C:1", start=1.0, result=1),
        op(INCR, "C:1", start=2.0, result=2),
        op(INCR, "C:1", outcome=FAILED, start=3.0),
        op(REG, "R:1", "0.4", start=1.0),
        op(REG, "R:1", "1.2", start=2.0, client=1),
        op(GET, "S:0:1", start=5.0, result="0.1"),
        op(LRANGE, "L:1", start=5.0, result=["0.2", "1.1", "0.3"]),
        op(GETC, "C:1", start=5.0, result="2"),
        op(GETR, "R:1", start=5.0, result="1.2"),
    ]
    final = {"S:0:1": "0.1", "L:1": ["0.2", "1.1", "0.3"], "C:1": "2", "R:1": "1.2"}
    return History(ops), final


def test_a_clean_history_passes() -> None:
    history, final = clean_history()
    report = check(history, state(final))
    assert report.anomalies == []
    assert report.counts == {OK: 12, FAILED: 1, UNKNOWN: 0}
    assert report.keys == 4
    assert violations(report, []) == []


@pytest.mark.parametrize("shows_up", [True, False])
def test_unknown_writes_are_never_lost_nor_unexpected_whether_they_show_up_or_not(shows_up: bool) -> None:
    history, final = clean_history()
    history.extend([op(SET, "S:0:9", "0.9", outcome=UNKNOWN), op(RPUSH, "L:1", "0.8", outcome=UNKNOWN),
                    op(INCR, "C:1", outcome=UNKNOWN), op(REG, "R:1", "0.7", outcome=UNKNOWN, start=9.0)])
    if shows_up:
        final.update({"S:0:9": "0.9", "L:1": [*final["L:1"], "0.8"], "C:1": "3", "R:1": "0.7"})  # type: ignore[list-item]
    assert check(history, state(final)).anomalies == []


def test_a_lost_acknowledged_set_is_reported() -> None:
    history, final = clean_history()
    del final["S:0:1"]
    report = check(history, state(final))
    assert report.kinds(LOST) == {"set_lost"} and report.total(LOST) == 1
    # The GET that saw it before the loss is that loss seen early, not a second anomaly.
    assert report.of(UNEXPECTED) == []


def test_a_lost_append_is_reported() -> None:
    history, final = clean_history()
    final["L:1"] = ["0.2", "0.3"]
    report = check(history, state(final))
    assert [(a.kind, a.op.value) for a in report.of(LOST)] == [("append_lost", "1.1")]  # type: ignore[union-attr]


def test_phantom_values_and_keys_are_reported() -> None:
    history, final = clean_history()
    final["L:1"] = [*final["L:1"], "7.7"]  # type: ignore[list-item]
    final["S:5:5"] = "5.5"
    final["R:1"] = "9.9"
    report = check(history, state(final))
    assert report.kinds(UNEXPECTED) == {"phantom_value", "phantom_key"}
    assert report.total(UNEXPECTED) == 3
    assert report.of(LOST) == []


def test_a_definitely_failed_write_that_was_applied_is_unexpected() -> None:
    history, final = clean_history()
    history.extend([op(SET, "S:0:2", "0.5", outcome=FAILED), op(RPUSH, "L:1", "0.6", outcome=FAILED, start=4.0)])
    final["S:0:2"] = "0.5"
    final["L:1"] = [*final["L:1"], "0.6"]  # type: ignore[list-item]
    report = check(history, state(final))
    assert [a.kind for a in report.of(UNEXPECTED)] == ["failed_write_applied"] * 2


def test_a_repeated_increment_is_reported() -> None:
    history, final = clean_history()
    final["C:1"] = "3"  # 2 acknowledged, 1 definitely failed, 0 unknown
    report = check(history, state(final))
    assert report.kinds(UNEXPECTED) == {"counter_repeated"} and report.total(UNEXPECTED) == 1


def test_a_skipped_increment_is_reported_as_lost() -> None:
    history, final = clean_history()
    final["C:1"] = "1"
    report = check(history, state(final))
    assert report.kinds(LOST) == {"counter_skipped"} and report.total(LOST) == 1
    # The read of 2 before is consistent with a loss that happened afterwards.
    assert report.of(UNEXPECTED) == []


def test_a_counter_within_acked_and_acked_plus_unknown_passes() -> None:
    history, final = clean_history()
    history.extend([op(INCR, "C:1", outcome=UNKNOWN), op(INCR, "C:1", outcome=UNKNOWN)])
    for value in ("2", "3", "4"):
        final["C:1"] = value
        assert check(history, state(final)).anomalies == [], value
    final["C:1"] = "5"
    assert check(history, state(final)).kinds(UNEXPECTED) == {"counter_repeated"}


def test_an_increment_that_saw_no_more_than_an_earlier_acknowledged_one_lost_it() -> None:
    history, final = clean_history()
    history.extend([op(INCR, "C:2", start=1.0, result=1), op(INCR, "C:2", start=2.0, result=2),
                    op(INCR, "C:2", start=2.005, end=2.5, result=3, client=1)])  # concurrent: any order
    final["C:2"] = "3"
    assert check(history, state(final)).anomalies == []
    history.extend([op(INCR, "C:2", start=3.0, result=2)])  # began after "2" was acknowledged
    final["C:2"] = "4"
    report = check(history, state(final))
    assert report.kinds(LOST) == {"counter_went_back"} and report.of(UNEXPECTED) == []
    assert report.of(LOST)[0].op.result == 3  # type: ignore[union-attr]  # the increment that went


def test_a_duplicated_or_reordered_append_is_unexpected() -> None:
    history, final = clean_history()
    final["L:1"] = ["0.2", "1.1", "0.3", "0.2"]
    assert check(history, state(final)).kinds(UNEXPECTED) == {"duplicate_value"}
    final["L:1"] = ["0.3", "1.1", "0.2"]  # client 0 appended 0.2 then 0.3
    report = check(history, state(final))
    assert report.kinds(UNEXPECTED) == {"reordered"}


def test_a_register_holding_an_older_acknowledged_value_lost_the_newer_one() -> None:
    history, final = clean_history()
    final["R:1"] = "0.4"  # 1.2 was acknowledged after 0.4 was
    report = check(history, state(final))
    assert report.kinds(LOST) == {"register_stale"}
    assert report.of(LOST)[0].op.value == "1.2"  # type: ignore[union-attr]


def test_a_register_may_end_on_a_concurrent_write() -> None:
    history, final = clean_history()
    history.extend([op(REG, "R:2", "0.1", start=1.0, end=3.0), op(REG, "R:2", "1.1", start=2.0, end=2.5, client=1)])
    for value in ("0.1", "1.1"):
        final["R:2"] = value
        assert check(history, state(final)).anomalies == [], value


def test_a_misplaced_key_is_reported_and_not_served() -> None:
    history, final = clean_history()
    wrong = key_in("g1", "S:0:")
    history.extend([op(SET, wrong, "x")])
    st = state(final)
    st.groups["g2"].master.keys[wrong] = "x"
    st.groups["g2"].replicas[0].keys[wrong] = "x"
    report = check(history, st)
    assert report.kinds(MISPLACED) == {"wrong_group"}
    assert report.kinds(LOST) == {"set_lost"}  # clients cannot read it where it is


def test_a_key_of_a_migrating_slot_may_be_on_either_side_but_not_both() -> None:
    history, final = clean_history()
    key = key_in("g1", "S:0:")
    history.extend([op(SET, key, "x")])
    st = state(final, replicas=0)
    st.migrating = {slot_of(key): ("g1", "g2")}
    st.groups["g2"].master.keys[key] = "x"
    assert check(history, st).anomalies == []
    st.groups["g1"].master.keys[key] = "x"
    assert check(history, st).kinds(MISPLACED) == {"two_groups"}


def test_a_diverged_replica_is_reported() -> None:
    history, final = clean_history()
    st = state(final)
    del st.groups["g1"].replicas[0].keys[next(iter(st.groups["g1"].master.keys))]
    st.groups["g2"].replicas[0].in_sync = False
    report = check(history, st)
    assert report.kinds(DIVERGED) == {"replica_differs", "replica_behind"}
    assert report.of(LOST) == [] and report.of(UNEXPECTED) == []


def test_a_read_that_missed_an_acknowledged_write_still_there_is_a_stale_read() -> None:
    history, final = clean_history()
    history.extend([op(GET, "S:0:1", start=6.0, result=None), op(GETC, "C:1", start=6.0, result="1"),
                    op(LRANGE, "L:1", start=6.0, result=["0.2"])])
    report = check(history, state(final))
    assert [a.kind for a in report.of(UNEXPECTED)] == ["stale_read"] * 4  # LRANGE missed two values


def test_a_read_of_something_never_written_is_a_phantom() -> None:
    history, final = clean_history()
    history.extend([op(GET, "S:0:1", start=6.0, result="zz"), op(GETR, "R:1", start=6.0, result="zz"),
                    op(LRANGE, "L:1", start=6.0, result=["0.2", "1.1", "0.3", "zz"]),
                    op(GETC, "C:1", start=6.0, result="3")])
    assert [a.kind for a in check(history, state(final)).of(UNEXPECTED)] == ["read_phantom"] * 4


def test_a_lossy_fault_excuses_only_its_groups_writes_inside_its_window() -> None:
    k1, k2 = key_in("g1", "S:1:"), key_in("g2", "S:1:")
    early, inside = key_in("g1", "S:1:", 1), key_in("g1", "S:1:", 2)
    history = History([op(SET, k1, "a", start=99.0, end=100.5), op(SET, k2, "b", start=100.0),
                       op(SET, early, "c", start=90.0), op(SET, inside, "d", start=100.2, end=103.0)])
    report = check(history, state({}))
    assert report.total(LOST) == 4
    g1_slots = frozenset(s for s in range(16384) if owner(s) == "g1")
    crash = lossy_crash("master SIGKILL", "g1", g1_slots, t0=100.0, t1=102.0, mode="datastore")
    left = violations(report, [crash])
    assert len(left) == 2 and any(k2 in v for v in left) and any(early in v for v in left)
    # Cache mode: everything the failed group held before it was removed.
    cache = lossy_crash("cache node SIGKILL", "g1", g1_slots, t0=100.0, t1=102.0, mode="cache")
    assert cache.before == math.inf
    assert [v for v in violations(report, [cache]) if k2 not in v] == []
    # A planned operation excuses nothing.
    assert len(violations(report, [FaultRecord("switchover", "g1", g1_slots, 100.0, 102.0)])) == 4


def test_lost_increments_are_excused_by_a_lossy_fault_on_the_counters_group() -> None:
    key = key_in("g1", "C:")
    history = History([op(INCR, key), op(INCR, key)])
    report = check(history, state({key: "1"}))
    g1_slots = frozenset(s for s in range(16384) if owner(s) == "g1")
    assert violations(report, [lossy_crash("x", "g1", g1_slots, 0.0, 1.0, "datastore")]) == []
    assert violations(report, [lossy_crash("x", "g2", frozenset(range(8192, 16384)), 0.0, 1.0, "datastore")])


@pytest.mark.parametrize("text, outcome", [
    ("TRYAGAIN kvstore-proxy is cut off from ZooKeeper and its routing may be stale; retry shortly", FAILED),
    ("CLUSTERDOWN group g1 is down", FAILED),
    ("CROSSSLOT Keys in request don't hash to the same slot", FAILED),
    ("NOAUTH Authentication required.", FAILED),
    ("READONLY You can't write against a read only replica.", FAILED),
    ("NOREPLICAS Not enough good replicas to write.", FAILED),
    ("ERR backend g1 127.0.0.1:7000 is down (connect failed: Connection refused)", FAILED),
    ("ERR backend g1 127.0.0.1:7000 is down (timeout: no reply within 5s)", FAILED),
    ("ERR backend g1 127.0.0.1:7000 is not connected", FAILED),
    ("ERR backend g1 127.0.0.1:7000 connect failed: TimeoutError", FAILED),
    ("ERR backend g1 127.0.0.1:7000 closed", FAILED),
    ("ERR backend g1 127.0.0.1:7000 connection lost: [Errno 104] Connection reset by peer", UNKNOWN),
    ("ERR backend g1 127.0.0.1:7000 connection closed by the server", UNKNOWN),
    ("ERR backend g1 127.0.0.1:7000 connection closed", UNKNOWN),
    ("ERR backend g1 127.0.0.1:7000 timeout: no reply within 5s", UNKNOWN),
    ("ERR backend g1 127.0.0.1:7000 protocol error from Redis: bad", UNKNOWN),
    ("ERR something nobody expected", UNKNOWN),
])
def test_error_replies_are_definite_only_when_the_request_was_not_forwarded(text: str, outcome: str) -> None:
    assert classify_error(text) == outcome


def test_fault_link_holds_bytes_during_a_stall_and_delivers_them_in_order_after(redis_server) -> None:  # type: ignore[no-untyped-def]
    link = FaultLink(redis_server.port)
    try:
        with socket.create_connection(("127.0.0.1", link.port), timeout=5) as s:
            s.sendall(b"PING\r\n")
            assert s.recv(100) == b"+PONG\r\n"
            link.stall()
            s.sendall(b"SET stalled 1\r\nGET stalled\r\n")
            s.settimeout(0.5)
            with pytest.raises(TimeoutError):
                s.recv(100)
            link.slow(0.2)
            t0 = time.monotonic()
            s.settimeout(5)
            data = b""
            while data.count(b"\r\n") < 3:
                data += s.recv(100)
            assert data == b"+OK\r\n$1\r\n1\r\n"
            s.sendall(b"PING\r\n")
            assert s.recv(100) == b"+PONG\r\n"
            assert time.monotonic() - t0 >= 0.35  # two slowed round trips, at least one delay each way
    finally:
        link.close()


# --- the stateful workload: transactions and a queue --------------------------------------------


def stateful_history() -> tuple[History, dict[str, object]]:
    """Two transactions on a tag, three elements pushed, two taken; and the state that matches."""
    ops = [
        op(MINCR, "T:1", start=1.0, result=[1, 1]),
        op(MINCR, "T:1", start=2.0, result=[2, 2]),
        op(MINCR, "T:1", outcome=FAILED, start=3.0),
        op(QPUSH, "Q:1", "0.1", start=1.0),
        op(QPUSH, "Q:1", "0.2", start=1.1),
        op(QPUSH, "Q:1", "0.3", start=1.2),
        op(QPOP, "Q:1", start=2.0, result="0.1"),
        op(QPOP, "Q:1", start=2.1, result="0.2"),
        op(QPOP, "Q:1", start=2.2, result=None),  # a wait that timed out
    ]
    return History(ops), {"{T:1}a": "2", "{T:1}b": "2", "Q:1": ["0.3"]}


def test_a_clean_stateful_history_passes() -> None:
    history, final = stateful_history()
    assert check(history, state(final)).anomalies == []


def test_a_transaction_applied_in_part_is_unexpected() -> None:
    history, final = stateful_history()
    final["{T:1}b"] = "1"
    report = check(history, state(final))
    assert report.kinds(UNEXPECTED) == {"transaction_partial"} and report.kinds(LOST) == {"transaction_lost"}
    history, final = stateful_history()
    history.extend([op(MINCR, "T:1", start=4.0, result=[3, 2])])
    final.update({"{T:1}a": "3", "{T:1}b": "3"})
    assert check(history, state(final)).kinds(UNEXPECTED) == {"transaction_not_atomic"}


def test_transactions_count_like_counters() -> None:
    history, final = stateful_history()
    final.update({"{T:1}a": "1", "{T:1}b": "1"})
    report = check(history, state(final))
    assert report.kinds(LOST) == {"transaction_lost"} and report.total(LOST) == 1
    final.update({"{T:1}a": "3", "{T:1}b": "3"})
    assert check(history, state(final)).kinds(UNEXPECTED) == {"transaction_repeated"}
    history.extend([op(MINCR, "T:1", outcome=UNKNOWN, start=5.0)])
    assert check(history, state(final)).anomalies == []


def test_an_element_nobody_took_and_not_queued_is_lost_unless_an_unknown_pop_may_have_taken_it() -> None:
    history, final = stateful_history()
    final["Q:1"] = []
    report = check(history, state(final))
    assert [(a.kind, a.op.value) for a in report.of(LOST)] == [("element_lost", "0.3")]  # type: ignore[union-attr]
    history.extend([op(QPOP, "Q:1", outcome=UNKNOWN, start=3.0)])
    assert check(history, state(final)).anomalies == []
    # an unknown pop that ended before the element was pushed cannot have taken it
    history, final = stateful_history()
    final["Q:1"] = []
    history.extend([op(QPOP, "Q:1", outcome=UNKNOWN, start=0.1, end=0.2)])
    assert check(history, state(final)).kinds(LOST) == {"element_lost"}


def test_an_element_taken_twice_or_taken_and_still_queued_lost_a_pop() -> None:
    history, final = stateful_history()
    history.extend([op(QPOP, "Q:1", start=3.0, result="0.2")])
    report = check(history, state(final))
    assert [(a.kind, a.op.start) for a in report.of(LOST)] == [("pop_lost", 2.1)]  # type: ignore[union-attr]
    assert report.of(UNEXPECTED) == []
    history, final = stateful_history()
    final["Q:1"] = ["0.3", "0.1"]
    assert check(history, state(final)).kinds(LOST) == {"pop_lost"}


def test_queue_phantoms_duplicates_and_failed_pushes_are_unexpected() -> None:
    history, final = stateful_history()
    history.extend([op(QPUSH, "Q:1", "0.9", outcome=FAILED, start=3.0)])
    final["Q:1"] = ["0.3", "0.3", "0.9", "7.7"]
    report = check(history, state(final))
    assert report.kinds(UNEXPECTED) == {"duplicate_value", "failed_write_applied", "phantom_value"}


def test_a_lost_pop_inside_a_crash_window_is_excused() -> None:
    history, final = stateful_history()
    history.extend([op(QPOP, "Q:1", start=3.0, result="0.2")])
    report = check(history, state(final))
    group = owner(slot_of("Q:1"))
    slots = frozenset(s for s in range(16384) if owner(s) == group)
    assert violations(report, [lossy_crash("master SIGKILL", group, slots, 2.5, 4.0, "datastore")]) == []
    assert violations(report, [lossy_crash("master SIGKILL", group, slots, 9.0, 10.0, "datastore")])
