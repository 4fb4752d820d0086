"""The key mover's pace as pure logic: when clients count as active, and what that changes."""

from __future__ import annotations

from kvstore_cluster.ops.pace import BUSY_BATCH, BUSY_BYTES_PER_SECOND, BUSY_SCAN_COUNT, HOLD_SECONDS, Pace, Sample


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _pace(rate: int = 1000) -> tuple[Pace, Clock]:
    clock = Clock()
    return Pace(rate, clock), clock


def test_only_the_movers_own_traffic_keeps_full_speed_even_with_requests_in_flight() -> None:
    pace, clock = _pace()
    assert pace.observe("a", Sample(clock.now, 1_000, 500, 900)) is None  # no basis yet
    # 0.25 s later the node read 400 kB; we had sent 400 kB more, of which 300 kB answered. The
    # 400 kB may all be ours (ours in flight at either reading): not one byte counts as a client's.
    clock.now += 0.25
    clients = pace.observe("a", Sample(clock.now, 401_000, 300_500, 400_900))
    assert clients == 0.0
    assert not pace.busy
    assert pace.batch(500) == 500
    assert pace.delay(500) == 0.0


def test_client_traffic_above_the_threshold_paces_the_movers_until_it_stops() -> None:
    pace, clock = _pace(rate=1000)
    pace.observe("a", Sample(clock.now, 0, 0, 0))
    assert "a" not in pace.judged and pace.scan_count(2000) == 2000  # one reading: no verdict yet
    clock.now += 0.25
    received = int(BUSY_BYTES_PER_SECOND * 0.25 * 2)  # twice the threshold, none of it ours
    assert pace.observe("a", Sample(clock.now, received, 0, 0)) == received / 0.25
    assert pace.busy and "a" in pace.judged
    assert pace.batch(500) == BUSY_BATCH
    assert pace.batch(10) == 10
    assert pace.scan_count(2000) == BUSY_SCAN_COUNT and pace.scan_count(100) == 100
    # 1000 keys/s: takes of 100 keys start 0.1 s apart.
    assert pace.delay(100) == 0.0
    assert abs(pace.delay(100) - 0.1) < 1e-9
    assert abs(pace.delay(100) - 0.2) < 1e-9
    # Clients gone: still paced for HOLD_SECONDS after they were last seen, then full speed.
    clock.now += HOLD_SECONDS - 0.01
    assert pace.busy
    clock.now += 0.02
    assert not pace.busy
    assert pace.delay(500) == 0.0
    assert pace.scan_count(2000) == 2000


def test_traffic_below_the_threshold_or_a_restarted_node_does_not_pace() -> None:
    pace, clock = _pace()
    pace.observe("a", Sample(clock.now, 10_000_000, 0, 0))
    clock.now += 1.0
    assert pace.observe("a", Sample(clock.now, 10_000_000 + BUSY_BYTES_PER_SECOND // 2, 0, 0)) is not None
    assert not pace.busy
    clock.now += 1.0
    assert pace.observe("a", Sample(clock.now, 5, 0, 0)) is None  # counters went back: restarted
    assert not pace.busy


def test_any_busy_source_paces_the_whole_reshard_and_rate_zero_never_paces() -> None:
    pace, clock = _pace()
    for address in ("a", "b"):
        pace.observe(address, Sample(clock.now, 0, 0, 0))
    clock.now += 0.25
    pace.observe("a", Sample(clock.now, 0, 0, 0))
    pace.observe("b", Sample(clock.now, 10_000_000, 0, 0))
    assert pace.busy

    unlimited, clock = _pace(rate=0)
    unlimited.observe("a", Sample(clock.now, 0, 0, 0))
    clock.now += 0.25
    unlimited.observe("a", Sample(clock.now, 10_000_000, 0, 0))
    assert not unlimited.busy
    assert unlimited.batch(500) == 500
