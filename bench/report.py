"""The pure half of the benchmark: parse redis-benchmark's CSV, fold rounds into a table, format it.

Nothing here starts a process or touches the network, so ``tests/test_bench_report.py`` can check
it table-driven. ``bench/run.py`` produces a list of ``Measurement`` (one per redis-benchmark run:
one test, one pipeline depth, one target, one round) and this module turns it into rows:

    measurements ──► group by (test, pipeline) ──► per target: median ops/s, median p99,
                                                  median proxy CPU s per 1M requests
                 ──► ratios kvstore / nutcracker (ops/s, p99, CPU; and kvstore --workers 2 ops/s)
                 ──► text / Markdown / JSON
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Targets in the order columns are shown. "direct" is one of the two redis-servers, unproxied;
# "kvstore" is kvstore-proxy --workers 1 (one core, like nutcracker), "kvstore2" --workers 2;
# "base" is kvstore-proxy as of another commit (run.py --baseline), to show what a change costs;
# "rules" is kvstore-proxy --workers 1 of a cluster with N key rules (run.py --rules N), none
# matching the benchmark's keys: what configured rules cost a key they do not apply to.
# "kvstore-tls" is the "kvstore" proxy's --tls-listen port (redis-benchmark --tls): what TLS costs.
TARGETS = ("direct", "nutcracker", "kvstore", "kvstore2", "kvstore-tls", "base", "rules")
PROXIES = ("nutcracker", "kvstore", "kvstore2", "kvstore-tls", "base", "rules")

# The targets, for kvstore-proxy --workers 1 against nutcracker in the same run: ops/s >= 1.0x
# (>= 1.3x for MGET/MSET of 10 keys: one sub-request per group against nutcracker's one per key),
# CPU seconds per million requests <= nutcracker's, p99 <= 1.2x, <= 16 KiB RSS per idle client.
OPS_RATIO_TARGET = 1.0
OPS_RATIO_TARGET_MULTIKEY = 1.3
CPU_RATIO_TARGET = 1.0
P99_RATIO_TARGET = 1.2
KIB_PER_CONN_TARGET = 16.0


def ops_target(test: str) -> float:
    """The ops/s ratio kvstore must reach on a row of ``test``."""
    return OPS_RATIO_TARGET_MULTIKEY if test.startswith(("MGET", "MSET")) else OPS_RATIO_TARGET

CSV_FIELDS = ("rps", "avg_latency_ms", "min_latency_ms", "p50_latency_ms", "p95_latency_ms",
              "p99_latency_ms", "max_latency_ms")


class CsvError(ValueError):
    """redis-benchmark printed something that is not the CSV we asked for."""


@dataclass(frozen=True)
class CsvResult:
    test: str
    rps: float
    avg_ms: float
    min_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


def parse_csv(text: str) -> list[CsvResult]:
    """The result lines of ``redis-benchmark --csv`` output.

    Lines that are not CSV records (redis-benchmark's "WARNING: Could not fetch server CONFIG",
    which every proxy triggers, or anything else on stdout) are ignored; the header line is
    required so a change of column order cannot go unnoticed.
    """
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    if not lines:
        raise CsvError("no CSV output from redis-benchmark")
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    header, records = rows[0], rows[1:]
    if not header or header[0] != "test" or tuple(header[1:]) != CSV_FIELDS:
        raise CsvError(f"unexpected redis-benchmark CSV header: {header!r}")
    out = []
    for rec in records:
        if len(rec) != len(header):
            raise CsvError(f"malformed redis-benchmark CSV line: {rec!r}")
        try:
            nums = [float(x) for x in rec[1:]]
        except ValueError:
            raise CsvError(f"non-numeric field in redis-benchmark CSV line: {rec!r}") from None
        out.append(CsvResult(rec[0], *nums))
    if not out:
        raise CsvError("redis-benchmark printed a CSV header but no result")
    return out


@dataclass
class Measurement:
    """One redis-benchmark run against one target."""

    test: str
    pipeline: int
    target: str
    round: int
    requests: int
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    avg_ms: float | None = None
    max_ms: float | None = None
    wall_s: float | None = None
    proxy_cpu_s: float | None = None  # user+system CPU of the proxy's processes during the run
    backend_cpu_s: float | None = None  # same, of both redis-servers together
    proxy_rss: int | None = None  # bytes, right after the run
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.rps is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def cpu_per_million(m: Measurement) -> float | None:
    """Proxy CPU seconds spent per one million requests in this run."""
    if not m.ok or m.proxy_cpu_s is None or m.requests <= 0:
        return None
    return m.proxy_cpu_s / m.requests * 1e6


@dataclass
class Row:
    test: str
    pipeline: int
    ops: dict[str, float | None] = field(default_factory=dict)  # median ops/s per target
    p99_ms: dict[str, float | None] = field(default_factory=dict)
    cpu_s_per_m: dict[str, float | None] = field(default_factory=dict)  # proxies only
    rounds_ops: dict[str, list[float]] = field(default_factory=dict)  # every round, for the spread
    # kvstore / nutcracker of the two runs of the same round (back to back, so drift cancels)
    paired_ratios: list[float] = field(default_factory=list)
    errors: dict[str, list[str]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.test} P{self.pipeline}"

    @property
    def ops_ratio(self) -> float | None:
        return ratio(self.ops.get("kvstore"), self.ops.get("nutcracker"))

    @property
    def ops_ratio2(self) -> float | None:
        return ratio(self.ops.get("kvstore2"), self.ops.get("nutcracker"))

    @property
    def base_ratio(self) -> float | None:
        """kvstore / the same proxy as of the baseline commit."""
        return ratio(self.ops.get("kvstore"), self.ops.get("base"))

    @property
    def rules_ratio(self) -> float | None:
        """kvstore with key rules / the same proxy without, same run."""
        return ratio(self.ops.get("rules"), self.ops.get("kvstore"))

    @property
    def tls_ratio(self) -> float | None:
        """kvstore over TLS / the same proxy's plain port."""
        return ratio(self.ops.get("kvstore-tls"), self.ops.get("kvstore"))

    @property
    def p99_ratio(self) -> float | None:
        return ratio(self.p99_ms.get("kvstore"), self.p99_ms.get("nutcracker"))

    @property
    def cpu_ratio(self) -> float | None:
        return ratio(self.cpu_s_per_m.get("kvstore"), self.cpu_s_per_m.get("nutcracker"))

    def to_json(self) -> dict[str, Any]:
        return {
            "test": self.test, "pipeline": self.pipeline, "ops_per_s": self.ops, "p99_ms": self.p99_ms,
            "proxy_cpu_s_per_1m_requests": self.cpu_s_per_m, "ops_per_s_each_round": self.rounds_ops,
            "ratio_kvstore_nutcracker_ops": self.ops_ratio, "ratio_kvstore_nutcracker_p99": self.p99_ratio,
            "ratio_kvstore_nutcracker_cpu": self.cpu_ratio, "ratio_kvstore2_nutcracker_ops": self.ops_ratio2,
            "ratio_kvstore_nutcracker_ops_each_round": self.paired_ratios,
            "ratio_kvstore_base_ops": self.base_ratio,
            "ratio_rules_kvstore_ops": self.rules_ratio,
            "ratio_kvstore_tls_plain_ops": self.tls_ratio,
            "errors": self.errors,
        }


def build_rows(measurements: Sequence[Measurement], row_order: Sequence[tuple[str, int]],
               targets: Sequence[str] = TARGETS) -> list[Row]:
    """Fold the rounds of each (test, pipeline) into one row of medians, in ``row_order``.

    A failed run (error, timeout) counts for nothing in the medians but is kept in ``errors``;
    a target with no successful run in a row shows as None (printed as a dash).
    """
    rows = []
    for test, pipeline in row_order:
        row = Row(test, pipeline)
        for target in targets:
            ms = [m for m in measurements if (m.test, m.pipeline, m.target) == (test, pipeline, target)]
            good = [m for m in ms if m.ok]
            row.ops[target] = _median(m.rps for m in good)
            row.p99_ms[target] = _median(m.p99_ms for m in good)
            if target in PROXIES:
                row.cpu_s_per_m[target] = _median(cpu_per_million(m) for m in good)
            row.rounds_ops[target] = [m.rps for m in good if m.rps is not None]
            errs = [m.error for m in ms if m.error]
            if errs:
                row.errors[target] = errs
        by_round: dict[int, dict[str, float]] = {}
        for m in measurements:
            if (m.test, m.pipeline) == (test, pipeline) and m.ok and m.target in PROXIES:
                by_round.setdefault(m.round, {})[m.target] = m.rps  # type: ignore[assignment]
        for rnd in sorted(by_round):
            r = ratio(by_round[rnd].get("kvstore"), by_round[rnd].get("nutcracker"))
            if r is not None:
                row.paired_ratios.append(r)
        rows.append(row)
    return rows


# --- formatting ----------------------------------------------------------------------------------


def fmt_ops(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def fmt_ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def fmt_ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def fmt_cpu(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def fmt_kib(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def fmt_mib(v: int | float | None) -> str:
    return "—" if v is None else f"{v / 2**20:.1f}"


HEADERS = ("test", "pipeline", "direct ops/s", "nutcracker ops/s", "kvstore ops/s", "kv/nc ops",
           "kv×2 ops/s", "kv×2/nc ops", "nc p99 ms", "kv p99 ms", "kv/nc p99", "nc CPU s/1M", "kv CPU s/1M",
           "kv×2 CPU s/1M")


def table_cells(rows: Sequence[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        out.append([
            r.test, str(r.pipeline),
            fmt_ops(r.ops.get("direct")), fmt_ops(r.ops.get("nutcracker")), fmt_ops(r.ops.get("kvstore")),
            fmt_ratio(r.ops_ratio), fmt_ops(r.ops.get("kvstore2")), fmt_ratio(r.ops_ratio2),
            fmt_ms(r.p99_ms.get("nutcracker")), fmt_ms(r.p99_ms.get("kvstore")), fmt_ratio(r.p99_ratio),
            fmt_cpu(r.cpu_s_per_m.get("nutcracker")), fmt_cpu(r.cpu_s_per_m.get("kvstore")),
            fmt_cpu(r.cpu_s_per_m.get("kvstore2")),
        ])
    return out


def text_table(rows: Sequence[Row]) -> str:
    cells = [list(HEADERS), *table_cells(rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    lines = []
    for n, c in enumerate(cells):
        # first column left-aligned, numbers right-aligned
        parts = [c[0].ljust(widths[0])] + [c[i].rjust(widths[i]) for i in range(1, len(c))]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |",
             "|" + "|".join([":---", "---:"] + ["---:"] * (len(HEADERS) - 2)) + "|"]
    for c in table_cells(rows):
        lines.append("| " + " | ".join(c) + " |")
    return "\n".join(lines)


@dataclass
class IdleResult:
    """RSS of one proxy before and after holding ``accepted`` idle client connections."""

    target: str
    requested: int
    accepted: int = 0  # connections the proxy had accepted (its fd count grew by this much)
    answered: int = 0  # connections that answered one PING with +PONG
    rss_before: int | None = None
    rss_connected: int | None = None  # all connections accepted, nothing sent yet
    rss_after_ping: int | None = None  # every connection has done one PING round trip
    error: str | None = None

    @property
    def kib_per_conn_connected(self) -> float | None:
        return _per_conn(self.rss_before, self.rss_connected, self.accepted)

    @property
    def kib_per_conn(self) -> float | None:
        """The headline figure: RSS growth per connection once each has been used once."""
        return _per_conn(self.rss_before, self.rss_after_ping, self.answered)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["kib_per_conn_connected"] = self.kib_per_conn_connected
        d["kib_per_conn"] = self.kib_per_conn
        return d


def _per_conn(before: int | None, after: int | None, n: int) -> float | None:
    if before is None or after is None or n <= 0:
        return None
    return (after - before) / n / 1024


def summary_lines(rows: Sequence[Row], rss: dict[str, dict[str, int | None]],
                  idle: Sequence[IdleResult], baseline: str | None = None, rules: int = 0) -> list[str]:
    """The lines under the table: RSS, per-connection RSS, where the issue's targets are missed,
    kvstore against the baseline commit when there is one, and with key rules when measured."""
    out = []
    with_rules = [r for r in rows if r.rules_ratio is not None]
    if with_rules:
        out.append(f"kvstore with {rules} key rules / without, ops/s, same run: "
                   + ", ".join(f"{r.label} {fmt_ratio(r.rules_ratio)}" for r in with_rules))
        cpu = [(r.label, ratio(r.cpu_s_per_m.get("rules"), r.cpu_s_per_m.get("kvstore"))) for r in with_rules]
        out.append(f"kvstore with {rules} key rules / without, CPU s/1M: "
                   + ", ".join(f"{label} {fmt_ratio(c)}" for label, c in cpu))
    tls = [r for r in rows if r.tls_ratio is not None]
    if tls:
        out.append("TLS: kvstore-proxy --tls-listen / its plain port (same process, same rounds), ops/s: "
                   + ", ".join(f"{r.label} {fmt_ops(r.ops.get('kvstore-tls'))} vs {fmt_ops(r.ops.get('kvstore'))} "
                               f"{fmt_ratio(r.tls_ratio)}" for r in tls))
        cpu = [(r.label, ratio(r.cpu_s_per_m.get("kvstore-tls"), r.cpu_s_per_m.get("kvstore"))) for r in tls]
        out.append("TLS: kvstore-proxy CPU s/1M, TLS / plain: " + ", ".join(f"{label} {fmt_ratio(c)}"
                                                                          for label, c in cpu))
    compared = [r for r in rows if r.base_ratio is not None]
    if compared:
        out.append(f"kvstore / base ({baseline or 'baseline'}) ops/s, same run: "
                   + ", ".join(f"{r.label} {fmt_ratio(r.base_ratio)}" for r in compared))
        cpu = [(r.label, ratio(r.cpu_s_per_m.get("kvstore"), r.cpu_s_per_m.get("base"))) for r in compared]
        out.append("kvstore / base CPU s/1M: " + ", ".join(f"{label} {fmt_ratio(c)}" for label, c in cpu))
    for t in PROXIES:
        r = rss.get(t)
        if r:
            out.append(f"RSS {t}: {fmt_mib(r.get('start'))} MiB after start, "
                       f"{fmt_mib(r.get('peak'))} MiB peak during the runs")
    for res in idle:
        if res.error and res.kib_per_conn is None:
            out.append(f"idle connections {res.target}: failed: {res.error}")
            continue
        out.append(
            f"idle connections {res.target}: {res.answered:,}/{res.requested:,} open, "
            f"{fmt_kib(res.kib_per_conn)} KiB RSS per connection after one PING each "
            f"({fmt_kib(res.kib_per_conn_connected)} KiB just connected); "
            f"RSS {fmt_mib(res.rss_before)} -> {fmt_mib(res.rss_after_ping)} MiB"
            + (f"  [{res.error}]" if res.error else "")
        )
    out.extend(target_misses(rows, idle))
    return out


def target_misses(rows: Sequence[Row], idle: Sequence[IdleResult]) -> list[str]:
    """One line per missed target of kvstore --workers 1 (only where both proxies were measured)."""
    out = []
    slow = [f"{r.label} ({r.ops_ratio:.2f}× < {ops_target(r.test):.1f}×)" for r in rows
            if r.ops_ratio is not None and r.ops_ratio < ops_target(r.test)]
    if slow:
        out.append(f"below the ops/s target ({OPS_RATIO_TARGET:.1f}× nutcracker; "
                   f"{OPS_RATIO_TARGET_MULTIKEY:.1f}× for MGET/MSET): " + ", ".join(slow))
    costly = [f"{r.label} ({r.cpu_ratio:.2f}×)" for r in rows
              if r.cpu_ratio is not None and r.cpu_ratio > CPU_RATIO_TARGET]
    if costly:
        out.append("CPU per request above nutcracker's: " + ", ".join(costly))
    laggy = [f"{r.label} ({r.p99_ratio:.2f}×)" for r in rows
             if r.p99_ratio is not None and r.p99_ratio > P99_RATIO_TARGET]
    if laggy:
        out.append(f"p99 above {P99_RATIO_TARGET:.1f}× nutcracker's: " + ", ".join(laggy))
    for res in idle:
        k = res.kib_per_conn
        if res.target == "kvstore" and k is not None and k > KIB_PER_CONN_TARGET:
            out.append(f"kvstore idle connection RSS {k:.1f} KiB > {KIB_PER_CONN_TARGET:.0f} KiB target")
    failed = [f"{r.label} {t}" for r in rows for t in r.errors]
    if failed:
        out.append("runs that failed (see JSON 'errors'): " + ", ".join(failed))
    return out
