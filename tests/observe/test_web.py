"""``kvstore-admin web``: the page in headless Chromium follows a reshard and a failover live; the API; staleness."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import Browser, chromium_binary
from observe_helpers import get, raw_request, scrape, status_of
from sentinel_helpers import FAST

from kvstore_admin.processes import LocalProcess, free_port, spawn, wait_until
from kvstore_cluster.ops.context import CRASH_HOOK_ENV, CRASH_HOOK_EXIT, HANG_AT_STEP_ENV

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "web-status.png"  # the README's picture (KVSTORE_UPDATE_SCREENSHOT=1 retakes it)


def admin(zk_hosts: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvstore_admin", "--zk", zk_hosts, "--cluster", "test", *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture
def web(zk_relay, tmp_path: Path) -> Iterator[LocalProcess]:  # type: ignore[no-untyped-def]
    """``kvstore-admin web`` on a free port, reaching ZooKeeper through the cuttable relay (cluster made first)."""
    procs: list[LocalProcess] = []

    def start() -> LocalProcess:
        port = free_port()
        argv = [sys.executable, "-m", "kvstore_admin", "--zk", zk_relay.hosts, "--cluster", "test", "web",
                "--listen", f"127.0.0.1:{port}", "--refresh", "0.5", "--zk-session-timeout", "3"]
        proc = spawn("web", argv, port, tmp_path / "web.log")
        procs.append(proc)
        wait_until(lambda: get(port, "/api/status")[0] == 200, 20, "kvstore-admin web to serve the status")
        return proc

    try:
        yield start  # type: ignore[misc]
    finally:
        for p in procs:
            p.stop(timeout=10)


def test_page_follows_a_reshard_and_a_failover_live(make_cluster, proxy_factory, sentinels, web,  # type: ignore[no-untyped-def]
                                                     zk_relay, tmp_path: Path) -> None:
    if chromium_binary() is None:
        pytest.fail("chromium is not installed: make test installs it (apt-get install chromium)")
    cluster = make_cluster(groups=3, replicas=1, mode="datastore")
    proxy_factory.start(cluster.zk_hosts, "test")
    # This sentinel stops its failovers at the repoint step: the page shows one in progress.
    sport = free_port()
    hanging = sentinels.start(cluster.zk_hosts, "test", *FAST, "--metrics-listen", f"127.0.0.1:{sport}",
                              env={HANG_AT_STEP_ENV: "repoint"})
    page = web()
    browser = Browser(width=1280, height=1000)
    try:
        browser.open(f"http://127.0.0.1:{page.port}/")
        browser.wait("document.querySelectorAll('#groups tr[data-group]').length === 3", 20, "three groups")
        browser.wait("document.querySelectorAll('#sentinels tr[data-sentinel]').length === 1", 20, "the sentinel")
        assert browser.js("document.getElementById('cluster').textContent") == "test"
        assert browser.js("document.querySelectorAll('#proxies tr[data-proxy]').length") == 1
        assert browser.js("document.body.dataset.stale") == "0"
        # The slot map: each slot drawn in its owner's colour, as the legend says.
        owners = {0: "g1", 8000: "g2", 16383: "g3"}
        for slot, gid in owners.items():
            assert _slot_colour(browser, slot) == _legend_colour(browser, gid), f"slot {slot} of {gid}"
        seq = int(browser.js("document.body.dataset.seq"))

        # A reshard stopped right after marking its slots: the page shows them marked, and its progress.
        crashed = admin(cluster.zk_hosts, "reshard", "--slots", "0-99", "--to", "g2", env={CRASH_HOOK_ENV: "marked"})
        assert crashed.returncode == CRASH_HOOK_EXIT, crashed.stderr
        browser.wait("document.getElementById('slotmap').dataset.marked === '100'", 20, "100 marked slots")
        assert "phase marked" in browser.js("document.getElementById('reshard').textContent")
        assert int(browser.js("document.body.dataset.seq")) > seq  # the same page, updated without reloading
        browser.screenshot(tmp_path / "page.png")
        if os.environ.get("KVSTORE_UPDATE_SCREENSHOT") == "1":
            browser.screenshot(SCREENSHOT)
        assert (tmp_path / "page.png").stat().st_size > 20_000

        resumed = admin(cluster.zk_hosts, "reshard", "--resume")
        assert resumed.returncode == 0, resumed.stderr
        browser.wait(_seen("reshard finished"), 20, "the reshard's end")
        assert browser.js("document.getElementById('slotmap').dataset.marked") == "0"
        assert _slot_colour(browser, 0) == _legend_colour(browser, "g2")
        assert browser.js("document.querySelector('#groups tr[data-group=g2] td:nth-child(3)').textContent") == "5561"

        # A failover: g1's master dies; the sentinel leading stops half-way (the page shows the failover
        # in progress, its metrics too), another sentinel finishes it; the page shows the new master.
        old, replica = cluster.nodes["g1"]
        old.stop(timeout=5)
        browser.wait("!!document.querySelector('#failovers [data-failover=g1]')", 30, "the failover in progress")
        assert "step repoint" in browser.js("document.querySelector('#failovers [data-failover=g1]').textContent")
        assert browser.js("document.querySelector('#groups tr[data-group=g1] .badge').textContent") == "failing_over"
        # The sentinel's metrics follow its own view of ZooKeeper, which may trail the page's by a tick.
        wait_until(lambda: [v for _, v in scrape(sport).all("kvstore_sentinel_failover_running_seconds", group="g1",
                                                             kind="failover", step="repoint") if v > 0], 10,
                   "the sentinel's metrics to show the failover at its repoint step")
        assert scrape(sport).value("kvstore_sentinel_group_state", group="g1", state="failing_over") == 1
        hanging.stop()
        sentinels.start(cluster.zk_hosts, "test", *FAST, sentinel_id="s2")
        browser.wait(f"document.querySelector('#groups tr[data-group=g1]').dataset.master === '{replica.address}'",
                     30, "the new master of g1")
        change = f"group g1: master {old.address} → {replica.address}"
        assert browser.js(_seen(change))
        browser.wait(f"document.querySelector('[data-node=\"{old.address}\"]').dataset.health === 'down'", 20,
                     "the old master shown down")
        browser.wait("!document.querySelector('#failovers [data-failover]')", 10, "no failover in progress")

        # ZooKeeper unreachable: the page keeps what it had and says it is stale; then fresh again.
        zk_relay.cut()
        try:
            browser.wait("document.body.dataset.stale === '1'", 15, "the page to show stale data")
            assert browser.js("getComputedStyle(document.getElementById('stale')).display") == "block"
            assert "ZooKeeper" in browser.js("document.getElementById('stale').textContent")
            assert browser.js("document.querySelectorAll('#groups tr[data-group]').length") == 3
            status, _, body = get(page.port, "/api/status")
            assert status == 200 and json.loads(body)["live"]["stale"] is True
        finally:
            zk_relay.heal()
        browser.wait("document.body.dataset.stale === '0'", 30, "the page fresh again")
    finally:
        browser.close()


def _seen(change: str) -> str:
    """JavaScript: is ``change`` in the page's list of changes seen?"""
    return f"[...document.querySelectorAll('#changes li')].some(li => li.dataset.change === {json.dumps(change)})"


def _slot_colour(browser: Browser, slot: int) -> str:
    x, y = (slot % 128) * 4 + 3, (slot // 128) * 4 + 2  # right half: a marked slot shows its target there
    rgb = browser.js(f"[...document.getElementById('slotmap').getContext('2d').getImageData({x}, {y}, 1, 1).data]"
                     ".slice(0, 3)")
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _legend_colour(browser: Browser, gid: str) -> str:
    rgb = browser.js(f"getComputedStyle(document.querySelector('#legend [data-group={gid}] .swatch')).backgroundColor")
    r, g, b = (int(v) for v in rgb[rgb.index("(") + 1 : rgb.index(")")].split(","))
    return f"#{r:02x}{g:02x}{b:02x}"


def test_api_has_status_json_shape_and_refuses_bad_requests(make_cluster, web, zk_relay) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster(groups=2)
    page = web()
    status, headers, body = get(page.port, "/api/status")
    assert status == 200 and headers["Content-Type"] == "application/json"
    served = json.loads(body)
    cli = admin(cluster.zk_hosts, "status", "--json")
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)
    assert set(served) == set(expected) | {"live"}
    assert served["groups"] == [{**g, "nodes": served["groups"][i]["nodes"]} for i, g in enumerate(expected["groups"])]
    assert served["slots"] == expected["slots"] and served["versions"] == expected["versions"]
    assert served["live"]["stale"] is False
    for part in ("groups", "slots", "proxies", "sentinels", "reshard", "failovers"):
        status, _, body = get(page.port, f"/api/{part}")
        assert status == 200 and part in json.loads(body), part
    assert json.loads(get(page.port, "/api/")[2])["endpoints"]
    assert get(page.port, "/")[0] == 200 and b"<canvas" in get(page.port, "/")[2]
    # Bad input: clean 4xx answers as JSON, and the server keeps serving.
    for path in ("/api/nope", "/nope", "/api/status/x/y", "/api/../etc/passwd"):
        status, _, body = get(page.port, path)
        assert status == 404 and json.loads(body)["status"] == 404, path
    for method in (b"POST", b"PUT", b"DELETE", b"PATCH"):
        reply = raw_request(page.port, method + b" /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(reply) == 405 and b"Allow: GET, HEAD" in reply
    assert status_of(raw_request(page.port, b"\x16\x03\x01garbage\r\n\r\n")) == 400
    assert status_of(raw_request(page.port, b"GET /api/status HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")) == 413
    events = raw_request(page.port, b"HEAD /api/events HTTP/1.1\r\n\r\n")
    assert status_of(events) == 200 and b"text/event-stream" in events
    assert get(page.port, "/api/status")[0] == 200


def test_web_command_refuses_bad_input(make_cluster, zk_hosts: str) -> None:  # type: ignore[no-untyped-def]
    make_cluster(groups=1)
    bad = admin(zk_hosts, "web", "--listen", "nonsense")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "kvstore_admin", "--zk", zk_hosts, "--cluster", "nope", "web",
                              "--listen", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 4 and "nope" in missing.stderr, missing.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = admin(zk_hosts, "web", "--listen", f"127.0.0.1:{taken.getsockname()[1]}")
    assert busy.returncode == 1 and "cannot listen" in busy.stderr, busy.stderr

