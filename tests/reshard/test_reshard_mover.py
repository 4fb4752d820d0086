"""The key mover against real redis-servers: one read of the source for every step, new keys tracked between steps."""

from __future__ import annotations

import asyncio

import redis
from reshard_helpers import keys_in_slots

from kvstore_cluster.ops.mover import Progress, SourceMover, Tuning
from kvstore_cluster.ops.new_keys import missing_flags, without_flags

STEP1, STEP2 = (0, 99), (100, 199)


def _targets(lo_hi: tuple[int, int], target: str) -> dict[int, str]:
    return {s: target for s in range(lo_hi[0], lo_hi[1] + 1)}


def _allowed() -> None:
    return None


def _run_two_steps(source: redis.Redis, source_address: str, target_address: str,
                   between: object) -> Progress:
    progress = Progress()

    async def run() -> None:
        mover = SourceMover(source_address, set(range(STEP2[0], STEP2[1] + 1)), Tuning(batch=50), progress)
        try:
            assert await mover.move(_targets(STEP1, target_address), _allowed) == 300
            between()  # type: ignore[operator]
            await mover.move(_targets(STEP2, target_address), _allowed)
        finally:
            await mover.close()

    asyncio.run(run())
    return progress


def _source_with_two_steps(redis_factory, events: str | None = None):  # type: ignore[no-untyped-def]
    """A source holding 300 keys in each step's slots (and ``notify-keyspace-events``), an empty target."""
    src, dst = redis_factory.start(), redis_factory.start()
    a, b = redis.Redis(port=src.port), redis.Redis(port=dst.port)
    if events is not None:
        a.config_set("notify-keyspace-events", events)
    for k in keys_in_slots(*STEP1, 300, "one") + keys_in_slots(*STEP2, 300, "two"):
        a.set(k, b"v")
    return src, dst, a, b


def _events(node: redis.Redis) -> set[str]:
    return set(node.config_get("notify-keyspace-events")["notify-keyspace-events"])


def test_keys_written_after_the_pass_move_with_their_step_without_reading_the_source_again(redis_factory) -> None:  # type: ignore[no-untyped-def]
    src, dst = redis_factory.start(), redis_factory.start()
    a, b = redis.Redis(port=src.port), redis.Redis(port=dst.port)
    first, second = keys_in_slots(*STEP1, 300, "one"), keys_in_slots(*STEP2, 300, "two")
    other = keys_in_slots(200, 16383, 100, "stay")
    for k in first + second + other:
        a.set(k, b"v")
    late = keys_in_slots(*STEP2, 50, "late")  # written once the pass is over (before step 2's mark)

    def write_late() -> None:
        for k in late:
            a.set(k, b"late")
        a.delete(second[0])  # and one kept key deleted meanwhile: a NOKEY, nothing else

    progress = _run_two_steps(a, src.address, dst.address, write_late)
    assert progress.scans == 1  # step 2 came from the kept keys and the tracker
    assert progress.keys == 300 + 299 + 50
    assert sorted(a.scan_iter(count=1000)) == sorted(other)
    assert all(b.get(k) == b"late" for k in late) and b.dbsize() == 649


def test_a_lost_tracker_makes_the_next_step_read_the_source_again(redis_factory) -> None:  # type: ignore[no-untyped-def]
    src, dst, a, b = _source_with_two_steps(redis_factory)
    late = keys_in_slots(*STEP2, 50, "late")

    def lose_tracker() -> None:
        tracking = [c for c in a.client_list() if "P" in c["flags"]]  # the subscribed connection
        assert len(tracking) == 1
        a.client_kill_filter(_id=tracking[0]["id"])
        for k in late:  # written while nobody tracks: only a new pass finds them
            a.set(k, b"late")

    progress = _run_two_steps(a, src.address, dst.address, lose_tracker)
    assert progress.scans == 2
    assert a.dbsize() == 0 and b.dbsize() == 650


def test_new_key_flags_are_added_for_the_move_and_taken_away_after(redis_factory) -> None:  # type: ignore[no-untyped-def]
    src, dst, a, b = _source_with_two_steps(redis_factory, "Kx")  # an application's own keyspace notifications
    seen: list[set[str]] = []

    progress = _run_two_steps(a, src.address, dst.address, lambda: seen.append(_events(a)))
    assert progress.scans == 1
    assert seen == [set("KxEn")]  # while the mover tracks new keys
    assert _events(a) == set("Kx")
    assert a.dbsize() == 0 and b.dbsize() == 600


def test_flags_changed_under_the_tracker_make_the_next_step_read_the_source_again(redis_factory) -> None:  # type: ignore[no-untyped-def]
    src, dst, a, b = _source_with_two_steps(redis_factory)
    late = keys_in_slots(*STEP2, 50, "late")

    def turn_events_off() -> None:
        a.config_set("notify-keyspace-events", "")
        for k in late:  # created while the node says nothing about new keys
            a.set(k, b"late")

    progress = _run_two_steps(a, src.address, dst.address, turn_events_off)
    assert progress.scans == 2
    assert a.dbsize() == 0 and b.dbsize() == 650


def test_flags_a_dead_mover_left_are_taken_away_by_the_next_one(redis_factory) -> None:  # type: ignore[no-untyped-def]
    src, dst, a, _ = _source_with_two_steps(redis_factory, "Ex")

    async def die_tracking() -> None:
        mover = SourceMover(src.address, set(range(STEP2[0], STEP2[1] + 1)), Tuning(), Progress())
        await mover.move(_targets((300, 399), dst.address), _allowed)  # no key there: the flags are what counts
        assert mover.tracker is not None
        mover.tracker._writer = None  # type: ignore[attr-defined]  # dies: nobody takes the flags away

    asyncio.run(die_tracking())
    assert _events(a) == set("Exn")
    _run_two_steps(a, src.address, dst.address, lambda: None)
    assert _events(a) == set("Ex")


def test_a_fence_that_cannot_check_the_flags_makes_the_next_step_read_the_source_again(redis_factory) -> None:  # type: ignore[no-untyped-def]
    src, dst, a, b = _source_with_two_steps(redis_factory)

    def drop_the_flags_check() -> None:
        # The tracker's other connection (the one reading notify-keyspace-events) goes away:
        # without that check the fence cannot vouch for the keys.
        control = [c for c in a.client_list() if c["cmd"].startswith("config")]
        assert len(control) == 1
        a.client_kill_filter(_id=control[0]["id"])

    progress = _run_two_steps(a, src.address, dst.address, drop_the_flags_check)
    assert progress.scans == 2
    assert a.dbsize() == 0 and b.dbsize() == 600


def test_the_tracker_adds_only_missing_flags_and_takes_away_only_its_own() -> None:
    assert missing_flags("") == "En" and missing_flags("AKE") == "n" and missing_flags("KEnx") == ""
    assert without_flags("KxEn", "En") == "Kx"
    assert without_flags("AKEn", "n") == "AKE"  # "E" was the application's: it stays
    assert without_flags("Kx", "En") == "Kx"  # someone took ours away already
