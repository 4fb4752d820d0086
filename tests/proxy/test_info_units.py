"""INFO's pure parts without servers: section choice, combining the groups' figures, latency data, error codes."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore_proxy import aggregate, info
from kvstore_proxy.config import ProxyConfig
from kvstore_proxy.datapath import LATENCY_BUCKETS, latency_bucket_of
from kvstore_proxy.latency import Histograms, LatencyEvents, event_for
from kvstore_proxy.stats import ERROR_CODES_MAX, OpsMeter, SlowLog, Stats

REDIS_DEFAULT = ["server", "clients", "memory", "persistence", "stats", "replication", "cpu", "modules",
                 "errorstats", "cluster", "backends", "keyspace"]


@pytest.mark.parametrize(
    ("args", "sections"),
    [
        ([], REDIS_DEFAULT),
        ([b"default"], REDIS_DEFAULT),
        ([b"DEFAULT"], REDIS_DEFAULT),
        ([b"all"], list(info.SECTIONS)),
        ([b"everything"], list(info.SECTIONS)),
        ([b"keyspace", b"CLUSTER", b"server"], ["server", "cluster", "keyspace"]),
        ([b"default", b"commandstats"], REDIS_DEFAULT[:8] + ["commandstats"] + REDIS_DEFAULT[8:]),
        ([b"nosuch"], []),
        ([b"cpu", b"cpu"], ["cpu"]),
        ([b"latencystats", b"nosuch"], ["latencystats"]),
    ],
)
def test_info_selects_sections_in_redis_order_whatever_the_request_order(args, sections):
    assert info.select(args) == sections


def test_parse_info_reads_sections_and_fields_in_order():
    text = ("# Server\r\nredis_version:7.0.15\r\nos:Linux 6 x86_64\r\n\r\n"
            "# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=5\r\n")
    parsed = aggregate.parse_info(text)
    assert list(parsed) == ["server", "keyspace"]
    assert parsed["server"] == {"redis_version": "7.0.15", "os": "Linux 6 x86_64"}
    assert aggregate.parse_pairs(parsed["keyspace"]["db0"]) == {"keys": "3", "expires": "1", "avg_ttl": "5"}


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0B"), (1023, "1023B"), (1024, "1.00K"), (941368, "919.30K"), (6508544, "6.21M"),
     (25276502016, "23.54G"), (3 << 40, "3.00T")],
)
def test_human_sizes_are_redis_bytes_to_human(n, text):
    assert aggregate.human(n) == text


MEM_A = {"used_memory": "1000", "used_memory_human": "1000B", "used_memory_rss": "4000",
         "used_memory_peak": "2000", "used_memory_peak_perc": "50.00%", "used_memory_startup": "100",
         "used_memory_dataset": "800", "used_memory_dataset_perc": "88.89%", "allocator_allocated": "1000",
         "allocator_active": "1100", "allocator_resident": "2000", "total_system_memory": "8000",
         "maxmemory": "5000", "maxmemory_human": "4.88K", "maxmemory_policy": "allkeys-lru",
         "allocator_frag_ratio": "1.10",
         "allocator_rss_ratio": "1.82", "rss_overhead_ratio": "2.00", "mem_fragmentation_ratio": "4.00",
         "mem_fragmentation_bytes": "3000", "mem_allocator": "jemalloc-5.3.0", "active_defrag_running": "0"}
MEM_B = {**MEM_A, "used_memory": "3000", "used_memory_rss": "4000", "used_memory_peak": "3000",
         "used_memory_dataset": "2800", "allocator_allocated": "3000", "allocator_active": "3300",
         "allocator_resident": "3000", "maxmemory": "7000", "mem_fragmentation_bytes": "1000",
         "active_defrag_running": "1"}


def test_memory_sums_bytes_and_computes_ratios_again_from_the_sums():
    m = aggregate.merge_section("memory", [MEM_A, MEM_B], ["10.0.0.1", "10.0.0.2"])
    assert list(m) == list(MEM_A)  # Redis's field order
    assert m["used_memory"] == "4000" and m["used_memory_human"] == "3.91K"
    assert m["used_memory_peak"] == "5000" and m["used_memory_peak_perc"] == "80.00%"
    assert m["used_memory_dataset_perc"] == f"{3600 * 100 / (4000 - 200):.2f}%"
    assert m["allocator_frag_ratio"] == "1.10" and m["allocator_rss_ratio"] == f"{5000 / 4400:.2f}"
    assert m["rss_overhead_ratio"] == f"{8000 / 5000:.2f}"
    assert m["mem_fragmentation_ratio"] == f"{8000 / (8000 - 4000):.2f}"
    assert m["maxmemory"] == "12000" and m["maxmemory_policy"] == "allkeys-lru"
    assert m["total_system_memory"] == "16000"  # two machines
    assert m["active_defrag_running"] == "1" and m["mem_allocator"] == "jemalloc-5.3.0"


def test_memory_of_groups_sharing_a_machine_counts_its_memory_once_and_no_limit_anywhere_is_no_limit():
    unlimited = {**MEM_B, "maxmemory": "0", "maxmemory_policy": "noeviction"}
    m = aggregate.merge_section("memory", [MEM_A, unlimited], ["127.0.0.1", "127.0.0.1"])
    assert m["total_system_memory"] == "8000"
    assert m["maxmemory"] == "0" and m["maxmemory_human"] == "0B"
    assert m["maxmemory_policy"] == "mixed"


def test_persistence_takes_the_oldest_save_and_the_worst_status():
    a = {"loading": "0", "rdb_changes_since_last_save": "5", "rdb_bgsave_in_progress": "0",
         "rdb_last_save_time": "1700000100", "rdb_last_bgsave_status": "ok", "rdb_last_bgsave_time_sec": "-1",
         "current_fork_perc": "0.00", "aof_last_write_status": "ok"}
    b = {**a, "rdb_changes_since_last_save": "7", "rdb_bgsave_in_progress": "1",
         "rdb_last_save_time": "1700000000", "rdb_last_bgsave_status": "err", "rdb_last_bgsave_time_sec": "3",
         "current_fork_perc": "42.50"}
    p = aggregate.merge_section("persistence", [a, b], ["h1", "h2"])
    assert p["rdb_changes_since_last_save"] == "12" and p["rdb_bgsave_in_progress"] == "1"
    assert p["rdb_last_save_time"] == "1700000000" and p["rdb_last_bgsave_status"] == "err"
    assert p["rdb_last_bgsave_time_sec"] == "3" and p["current_fork_perc"] == "42.50"
    assert p["aof_last_write_status"] == "ok" and p["loading"] == "0"


def test_a_field_only_some_masters_report_combines_those():
    s = aggregate.merge_section("stats", [{"keyspace_hits": "2"}, {"keyspace_hits": "3", "new_field": "4"}],
                                ["h1", "h2"])
    assert s == {"keyspace_hits": "5", "new_field": "4"}


def test_floats_stay_floats_and_text_that_differs_is_listed():
    s = aggregate.merge_section("stats", [{"instantaneous_input_kbps": "1.25", "x": "a"},
                                          {"instantaneous_input_kbps": "0.50", "x": "b"}], ["h1", "h2"])
    assert s == {"instantaneous_input_kbps": "1.75", "x": "mixed"}


def test_keyspace_sums_db0_and_weights_the_average_ttl_by_the_keys_that_expire():
    parts = [{"db0": "keys=10,expires=2,avg_ttl=1000", "db1": "keys=99,expires=0,avg_ttl=0"},
             {"db0": "keys=5,expires=6,avg_ttl=3000"}, {}]
    assert aggregate.merge_keyspace(parts) == {"db0": f"keys=15,expires=8,avg_ttl={(2000 + 18000) // 8}"}
    assert aggregate.merge_keyspace([{}, {"db1": "keys=1,expires=0,avg_ttl=0"}]) == {}


def test_memory_stats_sums_bytes_per_field_and_recomputes_ratios():
    # RESP2 shape (flat arrays, floats as text) from one master, RESP3 (dict, float) from the other
    a = [b"peak.allocated", 2000, b"total.allocated", 1000, b"startup.allocated", 100,
         b"db.0", [b"overhead.hashtable.main", 10, b"overhead.hashtable.expires", 0],
         b"keys.count", 3, b"keys.bytes-per-key", 300, b"dataset.bytes", 600, b"dataset.percentage", b"66.6",
         b"allocator.allocated", 1000, b"allocator.active", 1200, b"allocator-fragmentation.ratio", b"1.2",
         b"fragmentation", b"1.5",
         b"fragmentation.bytes", 500, b"allocator.resident", 1400, b"rss-overhead.bytes", 100]
    b = {b"peak.allocated": 3000, b"total.allocated": 3000, b"startup.allocated": 100,
         b"db.0": {b"overhead.hashtable.main": 30, b"overhead.hashtable.expires": 4},
         b"keys.count": 7, b"keys.bytes-per-key": 414, b"dataset.bytes": 2000, b"dataset.percentage": 68.9,
         b"allocator.allocated": 3000, b"allocator.active": 3300, b"fragmentation": 1.2,
         b"fragmentation.bytes": 400, b"allocator.resident": 3600, b"rss-overhead.bytes": 0}
    merged = dict(aggregate.merge_memory_stats([a, b]))
    assert merged["total.allocated"] == 4000 and merged["keys.count"] == 10
    assert merged["db.0"] == [("overhead.hashtable.main", 40), ("overhead.hashtable.expires", 4)]
    assert merged["keys.bytes-per-key"] == (4000 - 200) // 10
    assert merged["dataset.percentage"] == pytest.approx(2600 * 100 / 3800)
    assert merged["allocator-fragmentation.ratio"] == pytest.approx(4500 / 4000)
    assert merged["fragmentation"] == pytest.approx(5100 / (5100 - 900))
    assert list(merged)[:4] == ["peak.allocated", "total.allocated", "startup.allocated", "db.0"]


def test_memory_stats_refuses_a_value_that_is_not_a_number():
    with pytest.raises(ValueError, match="not a number"):
        aggregate.merge_memory_stats([[b"total.allocated", b"lots"]])


def test_latency_events_keep_each_seconds_worst_and_the_worst_ever():
    ev = LatencyEvents(5)
    ev.add("command", 7, now=100.2)
    ev.add("command", 9, now=100.9)
    ev.add("command", 6, now=101.0)
    ev.add("fast-command", 5, now=101.5)
    assert ev.history("command") == [(100, 9), (101, 6)]
    assert ev.latest() == [("command", 101, 6, 9), ("fast-command", 101, 5, 5)]
    assert ev.reset(["command", "nosuch", "command"]) == 1
    assert ev.latest() == [("fast-command", 101, 5, 5)]
    assert ev.reset() == 1 and ev.latest() == []


def test_latency_events_of_several_workers_merge_per_second():
    a, b = LatencyEvents(1), LatencyEvents(1)
    a.add("command", 10, now=50)
    a.add("command", 3, now=52)
    b.add("command", 12, now=50)
    b.add("command", 4, now=51)
    merged = LatencyEvents.merge([json.loads(json.dumps(a.to_json())), b.to_json()])
    assert merged.history("command") == [(50, 12), (51, 4), (52, 3)]
    assert merged.latest() == [("command", 52, 3, 12)]


def test_latency_event_names_follow_the_fast_flag():
    assert event_for("get") == "fast-command" and event_for("keys") == "command"
    assert event_for("hget") == "fast-command" and event_for("client|id") == "command"
    assert event_for("(unknown)") == "command"


def _histograms(name: str, latencies_us: list[float]) -> Histograms:
    counts: dict[int, int] = {}
    for us in latencies_us:
        b = latency_bucket_of(us / 1e6)
        counts[b] = counts.get(b, 0) + 1
    return Histograms({name: counts})


@settings(max_examples=500)
@given(st.floats(min_value=0, max_value=2.0 ** 40, allow_nan=False))
def test_a_latency_falls_in_a_bucket_at_most_a_sixteenth_wide(us: float) -> None:
    b = latency_bucket_of(us / 1e6)
    low, high = (LATENCY_BUCKETS[b - 1] if b else 0), LATENCY_BUCKETS[b]
    if b == len(LATENCY_BUCKETS) - 1:
        assert us >= low  # the last bucket holds everything above it too
    else:
        assert low <= us < high
        assert high - low == 1 or high - low <= low / 16


def test_latency_buckets_are_whole_microseconds_in_order_and_the_clock_going_back_counts_first():
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS)) and LATENCY_BUCKETS[:16] == tuple(range(1, 17))
    assert LATENCY_BUCKETS[-1] == 2 ** 36
    assert latency_bucket_of(-1.0) == latency_bucket_of(0.0) == latency_bucket_of(float("nan")) == 0
    assert latency_bucket_of(float("inf")) == latency_bucket_of(1e9) == len(LATENCY_BUCKETS) - 1


def test_histogram_percentiles_are_the_bucket_of_the_rank_as_redis_reports_them():
    h = _histograms("get", [us for us in range(1, 1001)])  # 1..1000 µs, once each
    p50, p99, p999 = h.percentiles("get")
    assert (p50, p99, p999) == (512.0, 992.0, 1024.0)  # the upper bounds of [496, 512), [960, 992), [992, 1024)
    for p, value in zip((50, 99, 99.9), (p50, p99, p999), strict=True):
        assert value - value / 16 <= p * 10 < value  # within one bucket (6.25%) above the true value
    calls, buckets = h.cumulative("get")
    assert calls == 1000
    assert buckets[-1] == (1024, 1000) and [b for b, _ in buckets] == [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert buckets[:3] == [(2, 1), (4, 3), (8, 7)]  # 1 µs: under 2; 2-3 µs: under 4; ...
    assert all(n1 <= n2 for (_, n1), (_, n2) in zip(buckets, buckets[1:], strict=False))
    merged = Histograms.merge([h.commands, json.loads(json.dumps(h.commands))])
    assert merged.cumulative("get")[0] == 2000 and merged.percentiles("get") == [p50, p99, p999]
    # 100 µs is a bucket bound ([96, 100) is under it); 1000 µs is not: [992, 1024) counts above it
    assert h.at_or_under("get", [0.5, 100, 1000, 1e9]) == [0, 99, 991, 1000]
    assert Histograms().percentiles("get") == [0.0, 0.0, 0.0] and Histograms().cumulative("get") == (0, [])


def test_error_replies_are_counted_by_code_like_redis_errorstats():
    s = Stats()
    for reply in [b"-WRONGTYPE Operation against a key\r\n", b"-ERR unknown command\r\n", b"-ERR x\r\n",
                  b"-NOSPACEINTHEFIRST32BYTES_XXXXXXXXXXXXXXXXXXXXXXX tail\r\n", b"-MOVED\r\n"]:
        s.count_error(reply)
    assert s.errors == {"WRONGTYPE": 1, "ERR": 4}
    for i in range(ERROR_CODES_MAX + 10):
        s.count_error(b"-CODE%d x\r\n" % i)
    assert len(s.errors) == ERROR_CODES_MAX


def test_ops_meter_averages_rates_sampled_every_100ms():
    m = OpsMeter()
    m.sample(0.0, 0)
    m.sample(0.05, 10)  # too soon: ignored
    m.sample(0.1, 100)
    m.sample(0.2, 300)
    assert m.rate() == pytest.approx(1500.0)


class _Stat:
    def __init__(self, name: str):
        self.name = name


class _Reply:
    def __init__(self, name: str):
        self.stat = _Stat(name)
        self.args = [name.encode()]


class _Session:
    addr = "127.0.0.1:1"
    name = b""


def test_slow_request_hook_threshold_is_the_lowest_of_what_is_enabled():
    assert SlowLog(128, 0.01).threshold == 0.01
    assert SlowLog(0, 0.01).threshold == float("inf")  # slow log off, nothing else: nothing comes
    assert SlowLog(128, 0.01, LatencyEvents(2)).threshold == 0.002
    log = SlowLog(128, 0.01, LatencyEvents(2))
    log.add(_Reply("keys"), 0.005, _Session())  # latency event only
    log.add(_Reply("keys"), 0.02, _Session())  # both
    assert [e[0] for e in log.events.latest()] == ["command"] and log.events.latest()[0][3] == 20
    assert len(log.entries) == 1


def test_a_sibling_reply_that_is_not_a_snapshot_is_a_missing_worker():
    good = {"clients": 1, "blocked": 0, "monitors": 0, "max_input": 0, "max_output": 0, "connections_received": 1,
            "rejected_connections": 0, "protocol_errors": 0, "idle_closed": 0, "ops": 0.0, "slowlog_len": 0,
            "commands": {}, "errors": {}, "events": {}, "cpu": [0.0] * 6, "histograms": None}
    assert info.parse_snapshot(json.dumps(good).encode()) == good
    for bad in [None, b"", b"garbage", b"[]", json.dumps({**good, "clients": "x"}).encode(),
                json.dumps({**good, "cpu": [1]}).encode(),
                json.dumps({k: v for k, v in good.items() if k != "ops"}).encode()]:
        assert info.parse_snapshot(bad) is None


def test_monitoring_empties_the_shared_routes_in_place_and_restores_them():
    from kvstore_proxy.server import Worker

    loop = asyncio.new_event_loop()
    try:
        w = Worker(ProxyConfig(), loop)
        routes = w.routes
        from kvstore_proxy import commands

        get = w.route_for(commands.lookup([b"get"]))  # type: ignore[arg-type]
        w.learn_route(b"GET", get)
        assert routes == {b"GET": get}
        w.set_monitoring(True)
        assert w.routes is routes and routes == {}
        w.learn_route(b"get", get)  # nothing is learned while monitoring
        assert routes == {}
        w.set_monitoring(False)
        assert w.routes is routes and routes == {b"GET": get}
    finally:
        loop.close()
