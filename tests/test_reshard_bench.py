"""The serving figures of tools/reshard_bench.py: redis-benchmark's report parsed, runs' latency
distributions merged into the p99 of all their requests, windows cut from the client load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from reshard_bench import Load, ReportError, merged_quantile, parse_report, run_benchmark  # noqa: E402


def progress(*lines: str) -> str:
    """The progress lines redis-benchmark draws over each other with carriage returns before its report."""
    return " \r" + "".join(f"{line}\r{' ' * (len(line) + 1)}\r" for line in lines)


# Captured from redis-benchmark 7.0.15 against a local redis-server: -c 50 -n 20000 -r 1000 -d 100 -t set.
SET_20000 = progress("SET: rps=0.0 (overall: -nan) avg_msec=-nan (overall: -nan)",
                     "SET: rps=65019.9 (overall: 65019.9) avg_msec=0.411 (overall: 0.411)") + "\n".join([
    '====== SET ======',
    '  20000 requests completed in 0.31 seconds',
    '  50 parallel clients',
    '  100 bytes payload',
    '  keep alive: 1',
    '  host configuration "save": ',
    '  host configuration "appendonly": no',
    '  multi-thread: no',
    '',
    'Latency by percentile distribution:',
    '0.000% <= 0.119 milliseconds (cumulative count 2)',
    '50.000% <= 0.383 milliseconds (cumulative count 11347)',
    '75.000% <= 0.423 milliseconds (cumulative count 15503)',
    '87.500% <= 0.463 milliseconds (cumulative count 17521)',
    '93.750% <= 0.543 milliseconds (cumulative count 18784)',
    '96.875% <= 0.703 milliseconds (cumulative count 19380)',
    '98.438% <= 0.951 milliseconds (cumulative count 19691)',
    '99.219% <= 1.167 milliseconds (cumulative count 19846)',
    '99.609% <= 1.535 milliseconds (cumulative count 19922)',
    '99.805% <= 1.927 milliseconds (cumulative count 19961)',
    '99.902% <= 2.359 milliseconds (cumulative count 19981)',
    '99.951% <= 2.567 milliseconds (cumulative count 19991)',
    '99.976% <= 2.687 milliseconds (cumulative count 19996)',
    '99.988% <= 2.719 milliseconds (cumulative count 19998)',
    '99.994% <= 2.743 milliseconds (cumulative count 19999)',
    '99.997% <= 2.775 milliseconds (cumulative count 20000)',
    '100.000% <= 2.775 milliseconds (cumulative count 20000)',
    '',
    'Cumulative distribution of latencies:',
    '0.000% <= 0.103 milliseconds (cumulative count 0)',
    '0.060% <= 0.207 milliseconds (cumulative count 12)',
    '1.155% <= 0.303 milliseconds (cumulative count 231)',
    '70.875% <= 0.407 milliseconds (cumulative count 14175)',
    '91.975% <= 0.503 milliseconds (cumulative count 18395)',
    '95.525% <= 0.607 milliseconds (cumulative count 19105)',
    '96.900% <= 0.703 milliseconds (cumulative count 19380)',
    '97.800% <= 0.807 milliseconds (cumulative count 19560)',
    '98.270% <= 0.903 milliseconds (cumulative count 19654)',
    '98.675% <= 1.007 milliseconds (cumulative count 19735)',
    '99.040% <= 1.103 milliseconds (cumulative count 19808)',
    '99.330% <= 1.207 milliseconds (cumulative count 19866)',
    '99.445% <= 1.303 milliseconds (cumulative count 19889)',
    '99.530% <= 1.407 milliseconds (cumulative count 19906)',
    '99.595% <= 1.503 milliseconds (cumulative count 19919)',
    '99.635% <= 1.607 milliseconds (cumulative count 19927)',
    '99.700% <= 1.703 milliseconds (cumulative count 19940)',
    '99.750% <= 1.807 milliseconds (cumulative count 19950)',
    '99.790% <= 1.903 milliseconds (cumulative count 19958)',
    '99.835% <= 2.007 milliseconds (cumulative count 19967)',
    '99.860% <= 2.103 milliseconds (cumulative count 19972)',
    '100.000% <= 3.103 milliseconds (cumulative count 20000)',
    '',
    'Summary:',
    '  throughput summary: 64724.92 requests per second',
    '  latency summary (msec):',
    '          avg       min       p50       p95       p99       max',
    '        0.411     0.112     0.383     0.583     1.095     2.775',
    '',
    '',
])

# -c 1 -n 98 -r 1000 -d 100 -t set --precision 3: 98 fast requests.
FAST_98 = progress("SET: rps=0.0 (overall: inf) avg_msec=0.088 (overall: 0.088)") + "\n".join([
    '====== SET ======',
    '  98 requests completed in 0.00 seconds',
    '  1 parallel clients',
    '  100 bytes payload',
    '  keep alive: 1',
    '  host configuration "save": ',
    '  host configuration "appendonly": no',
    '  multi-thread: no',
    '',
    'Latency by percentile distribution:',
    '0.000% <= 0.031 milliseconds (cumulative count 84)',
    '87.500% <= 0.047 milliseconds (cumulative count 87)',
    '93.750% <= 0.063 milliseconds (cumulative count 92)',
    '96.875% <= 0.095 milliseconds (cumulative count 95)',
    '98.438% <= 0.103 milliseconds (cumulative count 97)',
    '99.219% <= 0.127 milliseconds (cumulative count 98)',
    '100.000% <= 0.127 milliseconds (cumulative count 98)',
    '',
    'Cumulative distribution of latencies:',
    '98.980% <= 0.103 milliseconds (cumulative count 97)',
    '100.000% <= 0.207 milliseconds (cumulative count 98)',
    '',
    'Summary:',
    '  throughput summary: 24500.00 requests per second',
    '  latency summary (msec):',
    '          avg       min       p50       p95       p99       max',
    '        0.034     0.024     0.031     0.087     0.103     0.127',
    '',
    '',
])

# -c 1 -n 2 --precision 3 DEBUG SLEEP 0.05 (enable-debug-command yes): 2 requests of 50 ms.
SLOW_2 = progress("DEBUG SLEEP 0.05: rps=0.0 (overall: 0.0) avg_msec=-nan (overall: -nan)") + "\n".join([
    '====== DEBUG SLEEP 0.05 ======',
    '  2 requests completed in 0.10 seconds',
    '  1 parallel clients',
    '  36 bytes payload',
    '  keep alive: 1',
    '  host configuration "save": ',
    '  host configuration "appendonly": no',
    '  multi-thread: no',
    '',
    'Latency by percentile distribution:',
    '0.000% <= 50.207 milliseconds (cumulative count 1)',
    '75.000% <= 50.367 milliseconds (cumulative count 2)',
    '100.000% <= 50.367 milliseconds (cumulative count 2)',
    '',
    'Cumulative distribution of latencies:',
    '0.000% <= 0.103 milliseconds (cumulative count 0)',
    '100.000% <= 51.103 milliseconds (cumulative count 2)',
    '',
    'Summary:',
    '  throughput summary: 19.80 requests per second',
    '  latency summary (msec):',
    '          avg       min       p50       p95       p99       max',
    '       50.272    50.176    50.207    50.367    50.367    50.367',
    '',
])


def test_parse_report_reads_a_real_run():
    run = parse_report(SET_20000)
    assert (run.test, run.requests, run.rps, run.p99_ms) == ("SET", 20000, 64724.92, 1.095)
    # The summary's minimum (no request below it) and the last line of the cumulative table are points.
    assert run.cdf[:2] == ((0.103, 0), (0.112, 0)) and run.cdf[-1] == (3.103, 20000)
    # Points of both tables, in one ascending order.
    assert (0.951, 19691) in run.cdf and (1.007, 19735) in run.cdf and (1.103, 19808) in run.cdf
    assert [v for v, _ in run.cdf] == sorted(v for v, _ in run.cdf)
    assert [c for _, c in run.cdf] == sorted(c for _, c in run.cdf)


def test_parse_report_reads_a_custom_command_and_newlines_as_subprocess_text_mode_gives_them():
    run = parse_report(SLOW_2.replace("\r", "\n"))
    assert (run.test, run.requests, run.p99_ms) == ("DEBUG SLEEP 0.05", 2, 50.367)
    assert run.cdf == ((0.103, 0), (50.176, 0), (50.207, 1), (50.367, 2), (51.103, 2))


def test_the_p99_of_one_run_is_read_between_its_two_known_points_around_it():
    run = parse_report(SET_20000)
    # 19,800 requests (99%) lie between (1.007 ms, 19,735) and (1.103 ms, 19,808): linear in between.
    assert merged_quantile([run], 0.99) == pytest.approx(1.007 + (1.103 - 1.007) * (19800 - 19735) / (19808 - 19735))
    assert merged_quantile([run], 0.99) == pytest.approx(run.p99_ms, abs=0.01)  # redis-benchmark's own reading
    assert merged_quantile([run], 0.5) == pytest.approx(0.383, abs=0.01)


def test_the_merged_p99_of_98_fast_and_2_slow_requests_is_a_slow_one():
    fast, slow = parse_report(FAST_98), parse_report(SLOW_2)
    assert fast.p99_ms < 0.2 and slow.p99_ms > 50
    # The 99th of 100 requests is the first slow one (50.176-50.207 ms).
    assert 50.176 <= merged_quantile([fast, slow], 0.99) <= 50.207
    assert merged_quantile([slow, fast], 0.99) == merged_quantile([fast, slow], 0.99)


def test_runs_weigh_by_their_requests_not_by_their_own_percentiles():
    fast, slow = parse_report(FAST_98), parse_report(SLOW_2)
    # 296 requests: the 2 slow ones are the slowest 0.7%, so the p99 is a fast one (the worst run's p99 is 50 ms).
    assert merged_quantile([fast, fast, fast, slow], 0.99) < 0.21
    assert merged_quantile([fast, fast, fast, slow], 0.995) > 50


def test_merging_a_run_with_itself_changes_none_of_its_quantiles():
    run = parse_report(SET_20000)
    for q in (0.5, 0.9, 0.99, 0.999):
        assert merged_quantile([run, run, run], q) == pytest.approx(merged_quantile([run], q))


def test_merged_quantile_refuses_nothing_to_merge_and_quantiles_outside_0_1():
    run = parse_report(FAST_98)
    for runs, q in (([], 0.99), ([run], 0.0), ([run], 1.0)):
        with pytest.raises(ValueError):
            merged_quantile(runs, q)


@pytest.mark.parametrize("text, message", [
    ("", "'a test title' 0 times"),
    ("Could not connect to Redis at 127.0.0.1:1: Connection refused\n", "'a test title' 0 times"),
    ("Error from server: ERR value is not an integer or out of range\n", "'a test title' 0 times"),
    # what --csv and -q print instead
    ('"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",'
     '"max_latency_ms"\n"SET","64724.92","0.411","0.112","0.383","0.583","1.095","2.775"\n', "0 times"),
    ("SET: 64724.92 requests per second, p50=0.383 msec\n", "0 times"),
    (SET_20000 + SET_20000, "printed 'Latency by percentile distribution:' twice"),
    (SET_20000.replace("====== SET ======", "====== SET ======\n====== GET ======"), "'a test title' 2 times"),
    (SET_20000.replace("99.219% <= 1.167", "99.219% <= 1,167"), "malformed line under 'Latency by percentile"),
    (SET_20000.replace("(cumulative count 19808)", "(cumulative count 19900)"), "contradict each other"),
    (SET_20000.replace("20000 requests completed", "20001 requests completed"), "not at the 20001 requests"),
    (SET_20000.replace("1.095     2.775", "1.095     nan?"), "non-numeric latency summary"),
    (SET_20000.replace("p99       max", "p99.9     max"), "unexpected latency summary"),
    (SET_20000.replace("64724.92 requests", "inf requests"), "'a throughput summary' 0 times"),
    (SET_20000.replace("\nCumulative distribution of latencies:", "\nCumulative distribution of latencies:\n"),
     "has nothing under 'Cumulative"),
])
def test_parse_report_refuses_what_is_not_one_complete_report(text, message):
    with pytest.raises(ReportError, match=message):
        parse_report(text)


def test_every_truncation_of_a_report_is_refused():
    """Output cut anywhere before the end of the summary's last line gives an error, never a figure."""
    end = SET_20000.index("2.775\n") + len("2.775")
    parse_report(SET_20000[:end + 1])
    for cut in range(end + 1):
        with pytest.raises(ReportError):
            parse_report(SET_20000[:cut])


def test_a_window_holds_the_runs_wholly_inside_it_and_merges_their_requests():
    fast, slow = parse_report(FAST_98), parse_report(SLOW_2)
    load = Load(port=0, keys=1)
    # (began, ended): runs from 0.5-1.0, 1.0-2.0 and 2.5-3.5 s; the window is 0.5-3.0 s.
    load.runs = [(0.5, 1.0, fast), (1.0, 2.0, slow), (2.5, 3.5, slow)]
    w = load.window("test", 0.5, 3.0)
    assert (w["runs"], w["requests"]) == (2, 100)
    assert w["ops_per_second"] == round((24500.0 * 0.5 + 19.8 * 1.0) / 1.5)
    assert 50.176 <= w["p99_ms"] <= 50.207
    assert (w["worst_run_p99_ms"], w["median_run_p99_ms"]) == (50.367, (0.103 + 50.367) / 2)
    with pytest.raises(SystemExit, match="no redis-benchmark run lies wholly inside the idle window"):
        load.window("idle", 1.1, 2.4)


def test_a_load_that_cannot_run_says_why_instead_of_ending_silently(redis_factory):
    server = redis_factory.start(password="secret")  # every request of redis-benchmark is refused
    load = Load(port=server.port, keys=1000)
    load.run()  # returns (in its thread it would end the thread), the reason kept for serving() to raise
    assert load.failure is not None and "NOAUTH" in load.failure
    assert load.runs == []


def test_real_redis_benchmark_runs_merge_into_the_p99_of_all_their_requests(redis_factory):
    server = redis_factory.start(extra={"enable-debug-command": "yes"})
    fast = run_benchmark(server.port, "-c", "1", "-n", "98", "-t", "set")
    slow = run_benchmark(server.port, "-c", "1", "-n", "2", "DEBUG", "SLEEP", "0.05")
    assert (fast.test, fast.requests, slow.test, slow.requests) == ("SET", 98, "DEBUG SLEEP 0.05", 2)
    assert slow.cdf[1][0] >= 50.0  # the minimum: no request of 50 ms sleep took less
    assert merged_quantile([fast, slow], 0.99) >= 50.0
    assert merged_quantile([fast, fast, fast, slow], 0.99) < 50.0
    # A server's error reply ends redis-benchmark 7 (exit 1): an error, not a figure.
    subprocess.run(["redis-cli", "-p", str(server.port), "SET", "counter", "text"], check=True, capture_output=True)
    with pytest.raises(ReportError, match="exited with 1: .*Error from server"):
        run_benchmark(server.port, "-c", "1", "-n", "10", "INCR", "counter")

