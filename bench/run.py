"""kvstore benchmark: direct Redis vs nutcracker (twemproxy) vs kvstore-proxy (1 and 2 workers), interleaved.

    .venv/bin/python bench/run.py            # full run, ~7 minutes, writes bench/results/latest.*
    .venv/bin/python bench/run.py --quick    # ~1 minute smoke run, writes bench/results/quick.*
    .venv/bin/python bench/run.py --targets direct,nutcracker   # before kvstore-proxy exists

What runs (everything on 127.0.0.1, free ports, one temp dir, all stopped at the end):

    ZooKeeper + cluster "bench" (2 groups, cache mode)
    redis A = g1 ◄─┬─ nutcracker ◄──────────────────┐
    redis B = g2 ◄─┼─ kvstore-proxy --workers 1 ◄───┼── redis-benchmark -c 50 (one target at a time)
                   └─ kvstore-proxy --workers 2 ◄───┤
    redis A ◄───────────────────────────────────────┘   ("direct": one backend, no proxy)

    calibration pass (also the warm-up) ─► rounds × rows × targets, target order rotated each
    round ─► medians per row ─► table on stdout + JSON + Markdown + PNG ─► idle-connection RSS

See bench/README.md for how to read the output and the fairness notes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from bench import chart, cluster, idle, report, workload  # noqa: E402
from bench.certs import Certs  # noqa: E402
from bench.cluster import ProcTree, Target  # noqa: E402
from bench.report import Measurement  # noqa: E402
from kvstore_admin.processes import ProcessError  # noqa: E402
from kvstore_cluster.slots import key_slot  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 rounds of ~0.4 s per measurement (about a minute)")
    ap.add_argument("--targets", default=",".join(t for t in report.TARGETS if t not in ("base", "rules")),
                    help="comma-separated subset of direct,nutcracker,kvstore,kvstore2,kvstore-tls (default: all; "
                         "kvstore2 is kvstore-proxy --workers 2, kvstore-tls the kvstore proxy's TLS port; "
                         "base and rules come with --baseline and --rules)")
    ap.add_argument("--tests", default=",".join(t.name.split(" ")[0] for t in workload.TESTS),
                    help="comma-separated tests (default: all): " +
                    ", ".join(t.name.split(" ")[0] for t in workload.TESTS))
    ap.add_argument("--pipelines", default="1,16", help="pipeline depths (default: 1,16)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default: 3; --quick: 2)")
    ap.add_argument("--seconds", type=float,
                    help="target duration of each measurement (default: 2.5; --quick: 0.4)")
    ap.add_argument("--clients", type=int, default=50, help="redis-benchmark -c (default: 50)")
    ap.add_argument("--keyspace", type=int, default=100_000, help="redis-benchmark -r (default: 100000)")
    ap.add_argument("--idle-conns", type=int, default=10_000,
                    help="idle client connections per proxy for the RSS test (0 to skip; default 10000)")
    ap.add_argument("--distribution", default="modula", choices=("modula", "ketama"),
                    help="nutcracker distribution (default: modula, an even split like kvstore's slots)")
    ap.add_argument("--nutcracker-mbuf", type=int, help="nutcracker -m (default: its own, 16384)")
    ap.add_argument("--baseline", metavar="REF",
                    help="also run kvstore-proxy as of git REF (e.g. main) as target 'base', in the same "
                         "rounds: what a change costs shows as kvstore/base")
    ap.add_argument("--rules", type=int, default=0, metavar="N",
                    help="also run kvstore-proxy --workers 1 of a cluster with N key rules as target 'rules', in "
                         "the same rounds (none matches the benchmark's keys): what N rules cost, as rules/kvstore")
    ap.add_argument("--proxy-arg", action="append", default=[],
                    help="extra argument for kvstore-proxy (repeatable), e.g. --proxy-arg=--log-level=warning")
    ap.add_argument("--name", help="results file name without extension (default: latest; --quick: quick)")
    ap.add_argument("--out", type=Path, help=f"results directory (default: {RESULTS})")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="run nothing: rebuild the table, Markdown and chart of a saved run's JSON")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, configs) at the end")
    args = ap.parse_args(argv)
    args.out_given, args.name_given = args.out, args.name
    args.out = args.out or RESULTS
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.seconds = args.seconds or (0.4 if args.quick else 2.5)
    args.name = args.name or ("quick" if args.quick else "latest")
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.baseline and "base" not in args.target_list:
        args.target_list.append("base")
    if args.rules and "rules" not in args.target_list:
        args.target_list.append("rules")
    if "rules" in args.target_list and not args.rules:
        ap.error("--targets rules needs --rules N")
    if "base" in args.target_list and not args.baseline:
        ap.error("--targets base needs --baseline REF")
    if "kvstore-tls" in args.target_list and "kvstore" not in args.target_list:
        ap.error("--targets kvstore-tls needs kvstore (it is that proxy's TLS port)")
    bad = [t for t in args.target_list if t not in report.TARGETS]
    if bad or not args.target_list:
        ap.error(f"--targets: unknown {bad}; choose from {', '.join(report.TARGETS)}")
    wanted = [t.strip().upper() for t in args.tests.split(",") if t.strip()]
    by_short = {t.name.split(" ")[0]: t for t in workload.TESTS}
    bad = [t for t in wanted if t not in by_short]
    if bad:
        ap.error(f"--tests: unknown {bad}; choose from {', '.join(by_short)}")
    args.test_list = [by_short[t] for t in by_short if t in wanted]
    args.pipeline_list = [int(p) for p in args.pipelines.split(",")]
    return args


# --- machine description ------------------------------------------------------------------------


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout.strip() or out.stderr.strip()).splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    distro = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip('"')
    root = Path(__file__).resolve().parent.parent
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "os": distro,
        "python": platform.python_version(),
        "redis": _cmd(["redis-server", "--version"]),
        "redis_benchmark": workload.benchmark_version(),
        "nutcracker": cluster.nutcracker_version(),
        "git_commit": _cmd(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def describe_machine(m: dict[str, Any]) -> str:
    return (f"{m['date']} on {m['cpu_model']} ({m['nproc']} CPUs, {m['memory_gib']} GiB), "
            f"{m['os']}, Linux {m['kernel']}, Python {m['python']}, "
            f"{m['redis'].split(' sha=')[0]}, {m['nutcracker']}; "
            f"load average {m['loadavg_start'][0]} at start, {m.get('loadavg_end', ['?'])[0]} at end")


# --- the run -----------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, targets: dict[str, Target], backends: list[ProcTree],
                 backend_ports: list[int]):
        self.args = args
        self.targets = targets
        self.backends = backends
        self.backend_ports = backend_ports
        self.measurements: list[Measurement] = []
        self.requests: dict[tuple[str, int, str], int] = {}
        self.rss_peak: dict[str, int] = {}

    def rows(self) -> list[tuple[workload.Test, int]]:
        return [(t, p) for p in self.args.pipeline_list for t in self.args.test_list]

    def one(self, test: workload.Test, pipeline: int, target: str, rnd: int, requests: int) -> Measurement:
        t = self.targets[target]
        m = Measurement(test.name, pipeline, target, rnd, requests)
        cpu0 = t.tree.cpu_seconds() if t.tree else None
        bcpu0 = sum(b.cpu_seconds() for b in self.backends)
        # generous: a slow proxy is measured, a stuck one is reported, neither stops the run
        timeout = max(60.0, self.args.seconds * 20)
        res = workload.run_benchmark(t.port, test, requests, self.args.clients, pipeline,
                                     self.args.keyspace, timeout, t.bench_args)
        if t.tree:
            m.proxy_cpu_s = t.tree.cpu_seconds() - (cpu0 or 0.0)
            m.proxy_rss = t.tree.rss()
            self.rss_peak[target] = max(self.rss_peak.get(target, 0), m.proxy_rss)
        m.backend_cpu_s = sum(b.cpu_seconds() for b in self.backends) - bcpu0
        m.wall_s = round(res.wall_s, 3)
        m.error = res.error
        if res.result:
            r = res.result
            m.rps, m.p50_ms, m.p99_ms, m.avg_ms, m.max_ms = r.rps, r.p50_ms, r.p99_ms, r.avg_ms, r.max_ms
        return m

    def next_requests(self, m: Measurement) -> int:
        """Requests for the next run of this row and target: about ``--seconds`` at the rate just seen."""
        floor = self.args.clients * m.pipeline * 20
        if not m.ok or not m.rps:
            return max(floor, m.requests // 2)
        n = int(math.ceil(m.rps * self.args.seconds / 1000.0)) * 1000
        return max(floor, min(n, 20_000_000))

    def log(self, m: Measurement, prefix: str) -> None:
        if m.ok:
            cpu = f", proxy CPU {report.cpu_per_million(m):.2f} s/1M" if m.proxy_cpu_s is not None else ""
            print(f"  {prefix} {m.test} P{m.pipeline} {m.target}: {m.rps:,.0f} ops/s, p99 {m.p99_ms:.3f} ms"
                  f"{cpu}  (n={m.requests:,}, {m.wall_s:.1f} s)", flush=True)
        else:
            print(f"  {prefix} {m.test} P{m.pipeline} {m.target}: FAILED: {m.error}", flush=True)

    def calibrate(self) -> None:
        """One short run of every row and target: warms the proxies up and sizes -n for the rounds."""
        for test, pipeline in self.rows():
            for target in self.args.target_list:
                n = self.args.clients * pipeline * (40 if self.args.quick else 100)
                m = self.one(test, pipeline, target, -1, n)
                self.log(m, "[warm-up]")
                self.requests[(test.name, pipeline, target)] = self.next_requests(m)

    def rounds(self) -> None:
        tl = self.args.target_list
        for rnd in range(self.args.rounds):
            for port in self.backend_ports:
                workload.reset_list(port)
            order = tl[rnd % len(tl):] + tl[:rnd % len(tl)]
            print(f"round {rnd + 1}/{self.args.rounds}: order {' → '.join(order)}", flush=True)
            for test, pipeline in self.rows():
                for target in order:
                    key = (test.name, pipeline, target)
                    m = self.one(test, pipeline, target, rnd, self.requests[key])
                    self.measurements.append(m)
                    self.log(m, f"[{rnd + 1}/{self.args.rounds}]")
                    self.requests[key] = self.next_requests(m)


def expected_backends(ports: list[int]) -> dict[bytes, int]:
    """Where kvstore must put the sanity-check keys: g1 owns the lower half of the slots."""
    from kvstore_cluster.model import even_split
    ranges = even_split(["g1", "g2"])
    port_of = {"g1": ports[0], "g2": ports[1]}
    out = {}
    for i in range(64):
        k = f"bench:check:{i}".encode()
        s = key_slot(k)
        out[k] = next(port_of[g] for lo, hi, g in ranges if lo <= s <= hi)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.render, args.out_given, args.name_given)
    if "kvstore" in args.target_list and not cluster.kvstore_runnable():
        print("kvstore-proxy is not runnable yet (no kvstore_proxy/__main__.py); "
              "run with --targets direct,nutcracker", file=sys.stderr)
        return 2
    proxies = [t for t in args.target_list if t in report.PROXIES]
    nofile = idle.raise_nofile(max(4096, args.idle_conns * 2 + 1024))
    idle_conns = args.idle_conns
    if idle_conns and nofile < idle_conns + 1024:
        idle_conns = max(0, nofile - 1024)
        print(f"note: RLIMIT_NOFILE is {nofile}; idle-connection test uses {idle_conns} connections")

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    machine = machine_info()
    rows = args.test_list
    n_runs = len(rows) * len(args.pipeline_list) * len(args.target_list)
    est = n_runs * (args.rounds * (args.seconds + 0.25) + 0.4) + 2.5 * 3.5 * len(proxies) + 20
    print(f"kvstore bench: targets {', '.join(args.target_list)}; {len(rows) * len(args.pipeline_list)} rows x "
          f"{args.rounds} rounds, ~{args.seconds:g} s per measurement, {args.clients} clients; "
          f"expect ~{est / 60:.0f} min", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="kvstore-bench-"))
    ok = False
    try:
        with contextlib.ExitStack() as stack:
            backends = cluster.start_backends(stack, tmp)
            backend_trees = [ProcTree(b.pid) for b in backends]
            print(f"redis A {backends[0].address}, redis B {backends[1].address}: "
                  f"filling {args.keyspace:,} keys and mylist on both", flush=True)
            for b in backends:
                workload.fill_backend(b.port, args.keyspace)
            targets: dict[str, Target] = {}
            if "direct" in args.target_list:
                targets["direct"] = Target("direct", backends[0].port, None, None,
                                           f"redis A ({backends[0].address}) directly, no proxy")
            if "nutcracker" in args.target_list:
                targets["nutcracker"] = cluster.start_nutcracker(stack, tmp, backends, args.distribution,
                                                                 args.nutcracker_mbuf)
            kvstores = [t for t in ("kvstore", "kvstore2") if t in args.target_list]
            if kvstores or "base" in args.target_list or "rules" in args.target_list:
                zk = cluster.start_zk_cluster(stack, tmp, backends)
            tls = None
            if "kvstore-tls" in args.target_list:  # the "kvstore" proxy's TLS port
                certs = Certs(tmp / "certs")
                ca = certs.ca("ca")
                tls = (ca[0], certs.issue("proxy", ca))
            for name in kvstores:
                targets[name] = cluster.start_kvstore(stack, tmp, zk, args.proxy_arg, name=name,
                                                      workers=2 if name == "kvstore2" else 1,
                                                      tls=tls[1] if tls and name == "kvstore" else None)
            if tls:
                plain = targets["kvstore"]
                targets["kvstore-tls"] = cluster.Target(
                    "kvstore-tls", plain.tls_port, plain.proc, plain.tree, f"the kvstore proxy's --tls-listen port "
                    f"(127.0.0.1:{plain.tls_port}), redis-benchmark --tls", bench_args=("--tls", "--cacert", tls[0]))
            if "rules" in args.target_list:
                targets["rules"] = cluster.start_kvstore(stack, tmp, zk, args.proxy_arg, name="rules",
                                                         cluster=cluster.add_rules_cluster(zk, backends, args.rules))
                targets["rules"].note += f" ({args.rules} key rules)"
            if "base" in args.target_list:
                tree = cluster.checkout(args.baseline, tmp / "baseline-tree")
                targets["base"] = cluster.start_kvstore(stack, tmp, zk, args.proxy_arg, name="base", root=tree)
                targets["base"].note += f" (as of {args.baseline})"
            for name, t in targets.items():
                print(f"  {name}: 127.0.0.1:{t.port}" + (f" pid {t.proc.pid}" if t.proc else "")
                      + (f" — {t.note}" if t.note else ""), flush=True)
            sanity: dict[str, str | None] = {}
            ports = [b.port for b in backends]
            for name in [p for p in proxies if p != "kvstore-tls"]:  # the same process as kvstore
                exp = expected_backends(ports) if name != "nutcracker" else None
                sanity[name] = workload.sanity_check(name, targets[name].port, ports, exp)
                print(f"  sanity check {name}: " + (f"FAILED: {sanity[name]}" if sanity[name] else
                      "MSET/MGET/DEL of 64 keys right, each key on the right backend"), flush=True)
            rss_start = {n: targets[n].tree.rss() for n in proxies}  # type: ignore[union-attr]

            bench = Bench(args, targets, backend_trees, [b.port for b in backends])
            t0 = time.monotonic()
            bench.calibrate()
            bench.rounds()
            idle_results = []
            if idle_conns:
                for name in [p for p in proxies if p not in ("kvstore2", "kvstore-tls", "base", "rules")]:
                    print(f"idle connections: {idle_conns:,} to {name} ...", flush=True)
                    res = idle.run(name, targets[name].port, targets[name].tree, idle_conns)  # type: ignore[arg-type]
                    idle_results.append(res)
            elapsed = time.monotonic() - t0
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

        rounds = f"{args.rounds} round" + ("s" if args.rounds != 1 else "")
        header = (f"{args.clients} clients, {rounds} interleaved, ~{args.seconds:g} s per "
                  f"measurement, medians; direct = redis A alone; kvstore-proxy "
                  f"{targets['kvstore'].note if 'kvstore' in targets else '-'}"
                  + (f" (and {targets['kvstore2'].note})" if "kvstore2" in targets else "") + "; nutcracker "
                  f"{targets['nutcracker'].note if 'nutcracker' in targets else '-'}")
        doc = {
            "machine": machine,
            "header": header,
            "config": {
                "targets": args.target_list, "clients": args.clients, "rounds": args.rounds,
                "seconds_per_measurement": args.seconds, "keyspace": args.keyspace,
                "pipelines": args.pipeline_list, "tests": [t.name for t in args.test_list],
                "idle_conns": idle_conns, "quick": args.quick, "elapsed_s": round(elapsed, 1),
                "baseline": args.baseline, "rules": args.rules,
            },
            "targets": {n: {"port": t.port, "note": t.note} for n, t in targets.items()},
            "sanity_check_errors": sanity,
            "rss_bytes": {n: {"start": rss_start[n], "peak": bench.rss_peak.get(n)} for n in proxies},
            "idle_connections": [r.to_json() for r in idle_results],
            "measurements": [m.to_json() for m in bench.measurements],
        }
        finish(doc, args.out, args.name)
        ok = True
        return 0
    except ProcessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted ({exc or 'SIGINT'}): every process stopped, nothing written", file=sys.stderr)
        ok = True
        return 130
    finally:
        if ok and not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs and configs kept in {tmp}", file=sys.stderr)


IDLE_FIELDS = ("target", "requested", "accepted", "answered", "rss_before", "rss_connected", "rss_after_ping",
               "error")


def finish(doc: dict[str, Any], out: Path, name: str) -> None:
    """Fold ``doc``'s measurements into the table, print it, write NAME.json, .md and .png.

    Also used by ``--render`` to redo the table and chart of a saved run with the current code.
    """
    out.mkdir(parents=True, exist_ok=True)
    # The raw measurements first: a run's quarter of an hour is never lost to a report bug
    # (``--render`` redoes the table from this file).
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    cfg = doc["config"]
    measurements = [Measurement(**m) for m in doc["measurements"]]
    row_order = [(t, p) for p in cfg["pipelines"] for t in cfg["tests"]]
    table = report.build_rows(measurements, row_order, cfg["targets"])
    idle_results = [report.IdleResult(**{k: r.get(k) for k in IDLE_FIELDS}) for r in doc["idle_connections"]]
    lines = report.summary_lines(table, doc["rss_bytes"], idle_results, cfg.get("baseline"), cfg.get("rules") or 0)
    lines += [f"sanity check FAILED: {err}" for err in doc["sanity_check_errors"].values() if err]
    doc["rows"] = [r.to_json() for r in table]
    doc["idle_connections"] = [r.to_json() for r in idle_results]
    doc["summary"] = lines
    machine = describe_machine(doc["machine"])
    header = doc.get("header", "")
    print(f"\nMeasured {machine}\n{header}\n\n{report.text_table(table)}\n")
    for ln in lines:
        print(ln)

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = [f"Measured {machine}.", "", header + ".", "", report.markdown_table(table), ""]
    md += [f"- {ln}" for ln in lines]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    title = f"kvstore-proxy vs nutcracker vs direct Redis — median ops/s, redis-benchmark -c {cfg['clients']}"
    chart.draw(table, out / f"{name}.png", title, machine)
    print(f"\nwrote {out / name}.json, .md, .png")


def render(path: Path, out: Path | None, name: str | None) -> int:
    doc = json.loads(path.read_text())
    finish(doc, out or path.parent, name or path.stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
