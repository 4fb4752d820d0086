"""The alert rules and the Grafana dashboard: valid PromQL (promtool), alerts firing as intended, real metric names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "kvstore-alerts.yml"
RULE_TESTS = Path(__file__).parent / "kvstore-alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "kvstore-dashboard.json"
SOURCES = [REPO / "kvstore_proxy" / "metrics.py", REPO / "kvstore_sentinel" / "metrics.py"]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        available = subprocess.run(["apt-cache", "show", "prometheus"], capture_output=True).returncode == 0
        if available:
            pytest.fail("promtool is missing: 'make test' installs Debian's prometheus package, which has it")
        pytest.skip("promtool is not available here (Debian's prometheus package is not in the apt sources)")
    return found


def _run(*args: str) -> None:
    done = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_pass_promtool_check() -> None:
    _run("check", "rules", str(RULES))


def test_alert_rules_fire_as_their_unit_tests_say() -> None:
    _run("test", "rules", str(RULE_TESTS))


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) > 20
    # Each query as a recording rule: promtool parses it (Grafana's variables replaced by what they expand to).
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e.replace("$proxy", ".*")} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    _run("check", "rules", str(path))


def test_rules_and_dashboard_use_only_metrics_the_processes_export() -> None:
    exported = set()
    for source in SOURCES:
        exported |= set(re.findall(r'"(kvstore_(?:proxy|sentinel)_[a-z_]+)"', source.read_text()))
    assert "kvstore_proxy_requests" in exported and "kvstore_sentinel_failovers" in exported
    used = set(re.findall(r"\b(kvstore_(?:proxy|sentinel)_[a-z_]+)", RULES.read_text() + "\n".join(_dashboard_exprs())))
    assert used
    unknown = set()
    for name in used:
        base = re.sub(r"_(total|sum|count|bucket)$", "", name)
        if name not in exported and base not in exported:
            unknown.add(name)
    assert not unknown, f"not exported by any process: {sorted(unknown)}"
