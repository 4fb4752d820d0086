"""The benchmark's pure parts: redis-benchmark CSV parsing, folding rounds into medians and ratios,
the formatted tables and the per-connection RSS arithmetic (bench/report.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import (  # noqa: E402
    CsvError,
    IdleResult,
    Measurement,
    build_rows,
    cpu_per_million,
    markdown_table,
    parse_csv,
    ratio,
    summary_lines,
    target_misses,
    text_table,
)

HEADER = ('"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
          '"p99_latency_ms","max_latency_ms"')


def test_parse_csv_reads_the_one_result_line_of_redis_benchmark_7():
    text = HEADER + '\n"SET","49382.71","0.637","0.064","0.583","1.079","1.663","2.711"\n'
    (r,) = parse_csv(text)
    assert (r.test, r.rps, r.avg_ms, r.min_ms, r.p50_ms, r.p95_ms, r.p99_ms, r.max_ms) == (
        "SET", 49382.71, 0.637, 0.064, 0.583, 1.079, 1.663, 2.711)


def test_parse_csv_ignores_the_config_warning_a_proxy_causes_and_reads_custom_command_names():
    text = ("WARNING: Could not fetch server CONFIG\n" + HEADER + "\n"
            '"MGET key:__rand_int__ key:__rand_int__","62305.29","0.440","0.160","0.407","0.727","0.847","1.775"\n'
            '"MSET (10 keys)","1000","1","1","1","1","1","1"\n')
    rows = parse_csv(text)
    assert [r.test for r in rows] == ["MGET key:__rand_int__ key:__rand_int__", "MSET (10 keys)"]
    assert rows[1].rps == 1000.0


@pytest.mark.parametrize("text, message", [
    ("", "no CSV output"),
    ("WARNING: Could not fetch server CONFIG\n", "no CSV output"),
    ('"test","rps"\n"SET","1"\n', "unexpected redis-benchmark CSV header"),
    (HEADER + "\n", "no result"),
    (HEADER + '\n"SET","1","2"\n', "malformed"),
    (HEADER + '\n"SET","fast","1","1","1","1","1","1"\n', "non-numeric"),
])
def test_parse_csv_refuses_output_it_does_not_understand(text, message):
    with pytest.raises(CsvError, match=message):
        parse_csv(text)


def m(test="SET", pipeline=1, target="kvstore", rnd=0, rps=100.0, p99=1.0, cpu=None, requests=1000,
      error=None):
    return Measurement(test, pipeline, target, rnd, requests, rps=None if error else rps,
                       p99_ms=None if error else p99, proxy_cpu_s=cpu, error=error)


def test_build_rows_takes_medians_over_rounds_and_the_kvstore_over_nutcracker_ratio():
    ms = [
        m(target="direct", rps=300, rnd=0), m(target="direct", rps=100, rnd=1), m(target="direct", rps=200, rnd=2),
        m(target="nutcracker", rps=100, p99=2.0, cpu=0.010), m(target="nutcracker", rps=110, p99=4.0, cpu=0.012),
        m(target="nutcracker", rps=90, p99=3.0, cpu=0.011),
        m(target="kvstore", rps=80, p99=3.0, cpu=0.02), m(target="kvstore", rps=120, p99=6.0, cpu=0.02),
        m(target="kvstore", rps=99, p99=4.5, cpu=0.03),
    ]
    (row,) = build_rows(ms, [("SET", 1)], targets=["direct", "nutcracker", "kvstore"])
    assert row.ops == {"direct": 200, "nutcracker": 100, "kvstore": 99}
    assert row.ops_ratio == pytest.approx(0.99)
    assert row.p99_ms["nutcracker"] == 3.0 and row.p99_ms["kvstore"] == 4.5
    assert row.p99_ratio == pytest.approx(1.5)
    # 0.011 s of proxy CPU for 1000 requests = 11 s per million
    assert row.cpu_s_per_m == {"nutcracker": pytest.approx(11.0), "kvstore": pytest.approx(20.0)}
    assert "direct" not in row.cpu_s_per_m
    assert sorted(row.rounds_ops["direct"]) == [100, 200, 300]


def test_build_rows_keeps_rows_in_the_given_order_and_separates_pipelines():
    ms = [m(test="GET", pipeline=16, rps=5), m(test="GET", pipeline=1, rps=1), m(test="SET", pipeline=1, rps=2)]
    rows = build_rows(ms, [("SET", 1), ("GET", 1), ("GET", 16)], targets=["kvstore"])
    assert [(r.label, r.ops["kvstore"]) for r in rows] == [("SET P1", 2), ("GET P1", 1), ("GET P16", 5)]


def test_a_failed_run_counts_for_nothing_but_is_reported():
    ms = [m(target="nutcracker", rps=100), m(target="kvstore", rps=50),
          m(target="kvstore", rnd=1, error="timed out after 60s")]
    (row,) = build_rows(ms, [("SET", 1)], targets=["nutcracker", "kvstore"])
    assert row.ops["kvstore"] == 50
    assert row.errors == {"kvstore": ["timed out after 60s"]}
    assert any("failed" in line and "SET P1 kvstore" in line for line in target_misses([row], []))


def test_a_target_never_measured_shows_as_a_dash_and_has_no_ratio():
    (row,) = build_rows([m(target="direct"), m(target="nutcracker")], [("SET", 1)])
    assert row.ops["kvstore"] is None and row.ops_ratio is None and row.p99_ratio is None
    line = text_table([row]).splitlines()[-1]
    assert "—" in line and "×" not in line


@pytest.mark.parametrize("a, b, expected", [(2, 4, 0.5), (None, 4, None), (2, None, None), (2, 0, None)])
def test_ratio(a, b, expected):
    assert ratio(a, b) == expected


def test_cpu_per_million_needs_a_successful_run_with_cpu_measured():
    assert cpu_per_million(m(cpu=0.5, requests=250_000)) == pytest.approx(2.0)
    assert cpu_per_million(m(cpu=None)) is None
    assert cpu_per_million(m(cpu=0.5, error="boom")) is None


def test_tables_have_one_line_per_row_and_the_same_cells():
    ms = [m(target=t, rps=r) for t, r in (("direct", 1000), ("nutcracker", 800), ("kvstore", 1000))]
    rows = build_rows(ms, [("SET", 1)])
    text, md = text_table(rows), markdown_table(rows)
    assert len(text.splitlines()) == 3  # header, rule, row
    assert len(md.splitlines()) == 3
    for cell in ("1,000", "800", "1.25×"):
        assert cell in text and cell in md
    assert md.splitlines()[1].startswith("|:---|")


def test_idle_rss_per_connection_in_kib():
    r = IdleResult("kvstore", requested=10_000, accepted=10_000, answered=10_000,
                   rss_before=10 * 2**20, rss_connected=10 * 2**20 + 10_000 * 1024,
                   rss_after_ping=10 * 2**20 + 10_000 * 4096)
    assert r.kib_per_conn_connected == pytest.approx(1.0)
    assert r.kib_per_conn == pytest.approx(4.0)
    assert IdleResult("kvstore", requested=10).kib_per_conn is None


def test_target_misses_name_each_row_below_target():
    ms = [m(target="nutcracker", rps=100, p99=1.0), m(target="kvstore", rps=90, p99=1.3),
          m(test="GET", target="nutcracker", rps=100, p99=1.0), m(test="GET", target="kvstore", rps=101, p99=1.1)]
    rows = build_rows(ms, [("SET", 1), ("GET", 1)], targets=["nutcracker", "kvstore"])
    fat = IdleResult("kvstore", 10, 10, 10, rss_before=0, rss_connected=0, rss_after_ping=10 * 20 * 1024)
    lines = target_misses(rows, [fat])
    assert lines[0] == "below the ops/s target (1.0× nutcracker; 1.3× for MGET/MSET): SET P1 (0.90× < 1.0×)"
    assert lines[1] == "p99 above 1.2× nutcracker's: SET P1 (1.30×)"
    assert lines[2] == "kvstore idle connection RSS 20.0 KiB > 16 KiB target"


def test_multikey_rows_must_reach_1_3x_and_cpu_per_request_must_not_exceed_nutcracker_s():
    ms = [m(test="MGET (10 keys)", target="nutcracker", rps=100, cpu=0.010),
          m(test="MGET (10 keys)", target="kvstore", rps=125, cpu=0.009),
          m(test="GET", target="nutcracker", rps=100, cpu=0.010), m(test="GET", target="kvstore", rps=125, cpu=0.012),
          m(test="GET", target="kvstore2", rps=150, cpu=0.020)]
    rows = build_rows(ms, [("MGET (10 keys)", 1), ("GET", 1)])
    assert target_misses(rows, []) == [
        "below the ops/s target (1.0× nutcracker; 1.3× for MGET/MSET): MGET (10 keys) P1 (1.25× < 1.3×)",
        "CPU per request above nutcracker's: GET P1 (1.20×)"]
    assert rows[1].ops_ratio2 == pytest.approx(1.5) and rows[0].ops_ratio2 is None
    assert "1.50×" in text_table(rows) and "20.00" in markdown_table(rows)  # the --workers 2 columns


def test_summary_reports_rss_and_idle_connections():
    idle = [IdleResult("nutcracker", 100, 100, 100, rss_before=2**20, rss_connected=2**20,
                       rss_after_ping=2**20 + 100 * 512)]
    lines = summary_lines([], {"nutcracker": {"start": 2**20, "peak": 3 * 2**20}}, idle)
    assert lines[0] == "RSS nutcracker: 1.0 MiB after start, 3.0 MiB peak during the runs"
    assert lines[1].startswith("idle connections nutcracker: 100/100 open, 0.5 KiB RSS per connection")


def test_a_baseline_commit_run_in_the_same_rounds_is_compared_with_kvstore():
    ms = [m(target="kvstore", rps=98, cpu=0.0102), m(target="base", rps=100, cpu=0.01),
          m(test="GET", target="kvstore", rps=50), m(test="GET", target="nutcracker", rps=50)]
    rows = build_rows(ms, [("SET", 1), ("GET", 1)])
    assert rows[0].base_ratio == pytest.approx(0.98) and rows[1].base_ratio is None
    lines = summary_lines(rows, {}, [], "main")
    assert lines[0] == "kvstore / base (main) ops/s, same run: SET P1 0.98×"
    assert lines[1] == "kvstore / base CPU s/1M: SET P1 1.02×"
    assert not [ln for ln in summary_lines(rows[1:], {}, []) if "base" in ln]


def test_nutcracker_config_mirrors_the_kvstore_setup():
    from bench.cluster import nutcracker_config

    conf = nutcracker_config(7000, ["127.0.0.1:7001", "127.0.0.1:7002"])
    for line in ("listen: 127.0.0.1:7000", "hash: fnv1a_64", "distribution: modula", "redis: true",
                 "preconnect: true", "auto_eject_hosts: false", "server_connections: 1",
                 "- 127.0.0.1:7001:1 g1", "- 127.0.0.1:7002:1 g2"):
        assert line in conf


def test_paired_ratios_compare_the_two_proxies_within_each_round():
    ms = [m(target="nutcracker", rnd=0, rps=100), m(target="kvstore", rnd=0, rps=50),
          m(target="nutcracker", rnd=1, rps=300), m(target="kvstore", rnd=1, rps=330),
          m(target="kvstore", rnd=2, rps=999)]  # no nutcracker run in round 2: no pair
    (row,) = build_rows(ms, [("SET", 1)], targets=["nutcracker", "kvstore"])
    assert row.paired_ratios == [pytest.approx(0.5), pytest.approx(1.1)]


def test_tls_and_key_rules_rows_are_compared_with_the_plain_proxy_of_the_same_run():
    ms = [m(target="kvstore", rps=100, cpu=0.01), m(target="kvstore-tls", rps=80, cpu=0.0125),
          m(target="rules", rps=99, cpu=0.0101)]
    (row,) = build_rows(ms, [("SET", 1)], targets=["kvstore", "kvstore-tls", "rules"])
    assert row.tls_ratio == pytest.approx(0.8) and row.rules_ratio == pytest.approx(0.99)
    lines = summary_lines([row], {}, [], rules=20)
    assert "kvstore with 20 key rules / without, ops/s, same run: SET P1 0.99×" in lines
    assert "kvstore with 20 key rules / without, CPU s/1M: SET P1 1.01×" in lines
    assert [ln for ln in lines if ln.startswith("TLS: kvstore-proxy --tls-listen / its plain port") and "0.80×" in ln]
    assert "TLS: kvstore-proxy CPU s/1M, TLS / plain: SET P1 1.25×" in lines
    assert row.to_json()["ratio_kvstore_tls_plain_ops"] == pytest.approx(0.8)
