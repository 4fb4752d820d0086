"""What serving metrics costs the proxy: kvstore-proxy with and without --metrics-listen, in one run.

    redis A (g1) ◄──┬── kvstore-proxy --workers 1                       ◄── redis-benchmark  (plain)
    redis B (g2) ◄──┼── kvstore-proxy --workers 1                       ◄── redis-benchmark  (control)
                    └── kvstore-proxy --workers 1 --metrics-listen ...  ◄── redis-benchmark  (metrics)
                                  ▲ GET /metrics every --scrape-every seconds, all along

The three proxies run the same code over the same two Redis servers; each row is measured on
each of them in turn, the order rotating over the rounds, and the table gives the medians and
two ratios: metrics / plain, what serving metrics costs, and control / plain, two identical
proxies compared the same way, which is how far the run's noise alone moves a ratio
(``make bench-metrics``; ``--quick`` for a short run). Uses bench/'s cluster and workload.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cluster, workload  # noqa: E402
from kvstore_admin.processes import free_port  # noqa: E402

NAMES = ("plain", "metrics", "control")
ROWS = (("SET", 1), ("GET", 1), ("MGET (10 keys)", 1), ("SET", 16), ("GET", 16), ("MGET (10 keys)", 16))


def scraper(port: int, every: float, stop: threading.Event, counts: list[int]) -> None:
    """Scrape /metrics until ``stop``; counts[0] successes, counts[1] failures."""
    while not stop.wait(every):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                r.read()
            counts[0] += 1
        except OSError:
            counts[1] += 1


def cpu_per_scrape(target: cluster.Target, port: int) -> float:
    """CPU seconds the proxy spends on one /metrics request, measured on the idle proxy."""
    assert target.tree is not None
    samples = []
    for _ in range(3):
        before = target.tree.cpu_seconds()
        for _ in range(20):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                r.read()
        samples.append((target.tree.cpu_seconds() - before) / 20)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round, fewer requests")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--keyspace", type=int, default=100_000)
    ap.add_argument("--scrape-every", type=float, default=1.0, help="seconds between scrapes (default 1)")
    args = ap.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    scale = 0.25 if args.quick else 1.0
    tmp = Path(tempfile.mkdtemp(prefix="kvstore-bench-metrics-"))
    results: dict[tuple[str, int, str], list[float]] = {}
    cpu: dict[tuple[str, int, str], list[float]] = {}
    counts = [0, 0]
    load = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        backends = cluster.start_backends(stack, tmp)
        for b in backends:
            workload.fill_backend(b.port, args.keyspace)
        zk = cluster.start_zk_cluster(stack, tmp, backends)
        mport = free_port()
        targets = {
            "plain": cluster.start_kvstore(stack, tmp, zk, name="plain"),
            "control": cluster.start_kvstore(stack, tmp, zk, name="control"),
            "metrics": cluster.start_kvstore(stack, tmp, zk, ["--metrics-listen", f"127.0.0.1:{mport}"],
                                             name="metrics"),
        }
        scrape_cpu = cpu_per_scrape(targets["metrics"], mport)
        stop = threading.Event()
        thread = threading.Thread(target=scraper, args=(mport, args.scrape_every, stop, counts), daemon=True)
        thread.start()
        try:
            for rnd in range(rounds):
                for name, pipeline in ROWS:
                    test = workload.TESTS_BY_NAME[name]
                    requests = int((400_000 if pipeline > 1 else 100_000) * scale)
                    order = NAMES[rnd % 3:] + NAMES[:rnd % 3]
                    for target in order:
                        t = targets[target]
                        assert t.tree is not None
                        before = t.tree.cpu_seconds()
                        run = workload.run_benchmark(t.port, test, requests, args.clients, pipeline, args.keyspace,
                                                     timeout=120)
                        if run.result is None:
                            print(f"{target} {name} P{pipeline}: {run.error}", file=sys.stderr)
                            return 1
                        key = (name, pipeline, target)
                        results.setdefault(key, []).append(run.result.rps)
                        cpu.setdefault(key, []).append((t.tree.cpu_seconds() - before) / requests * 1e6)
                        print(f"round {rnd + 1} {name} P{pipeline} {target}: {run.result.rps:,.0f} ops/s",
                              flush=True)
        finally:
            stop.set()
            thread.join(10)
    print(f"\nMeasured {time.strftime('%Y-%m-%dT%H:%M:%S%z')}, load average {load:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end; {rounds} round(s), {args.clients} clients; /metrics scraped every "
          f"{args.scrape_every:g} s during the runs ({counts[0]} scrapes, {counts[1]} failed).\n")
    print(f"One scrape costs the idle proxy {scrape_cpu * 1000:.2f} ms of CPU (median of 3 x 20 scrapes): "
          f"{scrape_cpu / args.scrape_every * 100:.3f}% of a core at one scrape every {args.scrape_every:g} s, "
          f"{scrape_cpu / 15 * 100:.4f}% at Prometheus's usual 15 s.\n")
    print("| test | pipeline | without ops/s | with metrics ops/s | with/without | control/without (noise) "
          "| CPU s/1M without | CPU s/1M with | CPU s/1M control |")
    print("|:---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, pipeline in ROWS:
        ops = {n: statistics.median(results[(name, pipeline, n)]) for n in NAMES}
        c = {n: statistics.median(cpu[(name, pipeline, n)]) for n in NAMES}
        print(f"| {name} | {pipeline} | {ops['plain']:,.0f} | {ops['metrics']:,.0f} | "
              f"{ops['metrics'] / ops['plain']:.2f}× | {ops['control'] / ops['plain']:.2f}× | "
              f"{c['plain']:.2f} | {c['metrics']:.2f} | {c['control']:.2f} |")
    return 0 if counts[1] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
