"""Run one fault under the recorded workload, as many rounds as its time budget allows, then check and judge.

```
workload start ──► warm-up (ops acknowledged) ──► fault round: inject ─ bound ─ undo
   ──► cluster settled + ops acknowledged again ──► (budget left? another round)
   ──► workload stop ──► settled ──► read every group ──► check ──► contract ──► table row
```
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from chaos.checker import check, read_final_state
from chaos.cluster import ChaosCluster
from chaos.contracts import FaultRecord, excused_lost, violations
from chaos.report import ROWS, Row, render_table
from chaos.workload import Workload
from kvstore_admin.processes import wait_until

FAULTS = 11  # how many fault tests share KVSTORE_CHAOS_SECONDS
CI_SECONDS = 110.0  # the default: about 10 s of faults per test, a few minutes in all


def total_seconds() -> float:
    """The whole suite's fault time (``KVSTORE_CHAOS_SECONDS``); 0 runs each fault exactly once."""
    raw = os.environ.get("KVSTORE_CHAOS_SECONDS", "")
    try:
        return max(0.0, float(raw)) if raw else CI_SECONDS
    except ValueError:
        return CI_SECONDS


def budget() -> float:
    return total_seconds() / FAULTS


def fault_timeout(per_round: float = 120.0) -> float:
    """A pytest-timeout for one fault test: its budget plus room for a last round and the check."""
    return budget() + per_round + 60.0


def wait_serving(workload: Workload, since: float, ok: int = 40, timeout: float = 60.0) -> None:
    """Until ``ok`` ops that started after ``since`` were acknowledged: the cluster serves again."""
    wait_until(lambda: workload.ops_since(since)[0] >= ok, timeout,
               f"{ok} acknowledged ops after t={since:.1f}", interval=0.05)


def run_fault(cluster: ChaosCluster, name: str, fault: Callable[[ChaosCluster], list[FaultRecord]],
              out_dir: Path, clients: int = 6, rate: float = 60.0, expect_errors: tuple[str, ...] = (),
              max_rounds: int = 1_000_000, stateful: int = 0) -> Row:
    """The whole cycle for one fault; returns its row (also added to the session table) and asserts its contract.

    ``stateful`` clients add MULTI/EXEC transactions and an LPUSH/BRPOP queue to the workload.
    """
    started = time.monotonic()
    seed = zlib.crc32(name.encode()) & 0xFFFF
    workload = Workload(cluster.proxy_ports, clients=clients, rate=rate, seed=seed, stateful=stateful,
                        tls=cluster.client_tls).start()
    records: list[FaultRecord] = []
    rounds = 0
    try:
        wait_serving(workload, started, ok=100)
        deadline = time.monotonic() + budget()
        while True:
            records += fault(cluster)
            rounds += 1
            cluster.wait_settled(60)
            wait_serving(workload, time.monotonic())
            if time.monotonic() >= deadline or rounds >= max_rounds:
                break
    finally:
        history = workload.stop()
        history.dump(out_dir / "history.jsonl")
    cluster.wait_settled(60)
    assert cluster.store is not None
    state = read_final_state(cluster.store)
    report = check(history, state)
    problems = violations(report, records)
    row = Row(name, cluster.mode, rounds, report, time.monotonic() - started, "FAIL" if problems else "pass")
    injected = sorted({r.name for r in records})
    row.notes.append("injected: " + "; ".join(injected))
    excused = excused_lost(report, records)
    if excused:
        row.notes.append(f"{excused} lost writes, all inside a lossy fault's window (allowed)")
    ROWS.append(row)
    print()
    print(render_table([row.rendered()]))
    print(f"errors seen by clients: {history.errors()}")
    print(f"keys served at the end: {report.keys}; history: {out_dir / 'history.jsonl'}")
    if report.anomalies:
        print(report.summary())
    assert not problems, f"{name}: contract broken:\n" + "\n".join(problems[:30]) + f"\n{report.summary()}"
    # A fault that clients never noticed may not have happened at all.
    missing = [e for e in expect_errors if not any(e in (op.error or "") for op in history)]
    assert not missing, f"{name}: no client saw {missing}; did the fault bite? errors: {history.errors()}"
    return row
