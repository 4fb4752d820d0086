"""`kvstore-admin local up|down|status`: a whole cluster on this machine, stopped exactly and completely."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from kazoo.client import KazooClient

from kvstore_admin import local
from kvstore_admin.cli import cli
from kvstore_admin.processes import LocalProcess, free_port, redis_ping, wait_until
from kvstore_cluster.store import ClusterStore

# A stand-in for kvstore_proxy: answers +PONG to anything, forks idle "workers", or fails on purpose.
FAKE_PROXY = textwrap.dedent("""
    import asyncio, os, sys, time

    args = sys.argv[1:]
    host, port = args[args.index("--listen") + 1].rsplit(":", 1)
    workers = int(args[args.index("--workers") + 1])
    if os.environ.get("FAKE_PROXY_MODE") == "exit":
        print("fake proxy: failing on purpose", flush=True)
        sys.exit(1)
    children = []
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            while True:
                time.sleep(3600)
        children.append(pid)
    with open(os.environ["FAKE_PROXY_PIDS"], "w") as f:
        f.write(" ".join(map(str, children)))

    async def handle(reader, writer):
        while await reader.read(4096):
            writer.write(b"+PONG\\r\\n")
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, host, int(port))
        async with server:
            await server.serve_forever()

    asyncio.run(main())
""")


def admin(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def ok(*args: str) -> Result:
    result = admin(*args)
    assert result.exit_code == 0, result.output
    return result


def one_error(result: Result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error: ") and message in errors[0], result.stderr


def recorded(directory: Path) -> list[LocalProcess]:
    state = json.loads((directory / "state.json").read_text())
    return [LocalProcess.from_json(p) for p in state["processes"]]


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def fake_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Makes `local up` start FAKE_PROXY as the proxy; returns the file it writes its worker pids to."""
    pkg = tmp_path / "fakepath" / "fake_kvstore_proxy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(FAKE_PROXY)
    monkeypatch.syspath_prepend(str(pkg.parent))
    monkeypatch.setenv("PYTHONPATH", str(pkg.parent))
    monkeypatch.setattr(local, "PROXY_MODULE", "fake_kvstore_proxy")
    pids = tmp_path / "worker-pids"
    monkeypatch.setenv("FAKE_PROXY_PIDS", str(pids))
    return pids


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A state dir whose cluster is always brought down, even when the test fails."""
    directory = tmp_path / "local"
    yield directory
    if (directory / "state.json").exists():
        try:
            for proc in reversed(recorded(directory)):
                proc.stop()
        except (ValueError, KeyError, TypeError):
            pass  # a test's garbage state file: nothing of ours to stop


def test_up_status_down_datastore_with_its_own_zookeeper(state_dir: Path, redis_server: LocalProcess) -> None:
    port = free_port()
    up = ok("local", "up", "--dir", str(state_dir), "--groups", "2", "--replicas", "1",
            "--mode", "datastore", "--proxy-port", str(port))
    procs = recorded(state_dir)
    names = [p.name for p in procs]
    assert names[:5] == ["zookeeper", "redis-g1-master", "redis-g1-replica1", "redis-g2-master", "redis-g2-replica1"]
    assert all(p.alive() for p in procs)
    state = json.loads((state_dir / "state.json").read_text())
    zk = state["zk"]
    assert f"kvstore-admin --zk {zk} --cluster default status" in up.stdout
    assert f"redis-cli -p {port}" in up.stdout
    assert redis_ping(port)
    wait_until(lambda: json.loads(ok("--zk", zk, "proxies", "--json").stdout) != [], 15,
               "the proxy to register in ZooKeeper")

    status = json.loads(ok("--zk", zk, "status", "--json").stdout)
    assert status["mode"] == "datastore"
    assert status["slots"]["owned"] == 16384
    assert [(g["id"], g["slots"], len(g["replicas"])) for g in status["groups"]] == [("g1", 8192, 1), ("g2", 8192, 1)]
    assert all(n["up"] and n["ok"] for g in status["groups"] for n in g["nodes"])
    assert "16384/16384 owned" in ok("--zk", zk, "status").stdout

    local_status = json.loads(ok("local", "status", "--dir", str(state_dir), "--json").stdout)
    assert local_status["running"] == local_status["recorded"] == len(procs)
    assert local_status["zk"] == zk
    assert "running" in ok("local", "status", "--dir", str(state_dir)).stdout

    one_error(admin("local", "up", "--dir", str(state_dir), "--groups", "1"), 8,
              "processes); use 'kvstore-admin local down' first")
    assert recorded(state_dir) == procs  # no twins started

    down = ok("local", "down", "--dir", str(state_dir))
    assert f"local cluster down ({len(procs)} processes stopped)" in down.stdout
    assert not any(p.alive() for p in procs)
    assert redis_server.alive()  # not ours to stop
    assert not (state_dir / "state.json").exists()
    assert (state_dir / "redis-g1-master" / "redis.log").exists()  # logs are kept
    assert "nothing to stop" in ok("local", "down", "--dir", str(state_dir)).stdout
    one_error(admin("local", "status", "--dir", str(state_dir)), 8, "no local cluster recorded")


def test_up_in_cache_mode_on_an_existing_zookeeper(state_dir: Path, zk_hosts: str, zk: KazooClient) -> None:
    up = ok("--cluster", "lc", "local", "up", "--dir", str(state_dir), "--zk", zk_hosts, "--mode", "cache",
            "--groups", "2", "--sentinels", "0", "--proxy-port", str(free_port()))
    assert "zookeeper" not in [p.name for p in recorded(state_dir)]
    assert f"zookeeper: {zk_hosts}   cluster: lc" in up.stdout
    store = ClusterStore(zk, "lc")
    assert store.read_meta().value.mode == "cache"
    groups = store.read_groups().value
    assert groups.ids() == ["g1", "g2"] and all(g.replicas == () for g in groups)  # cache: no replicas
    assert store.read_slots().value.counts() == {"g1": 8192, "g2": 8192}
    procs = recorded(state_dir)
    assert "deleted cluster 'lc'" in ok("local", "down", "--dir", str(state_dir)).stdout
    assert not any(p.alive() for p in procs)
    assert not store.exists()  # so the next `up --zk` can create it again


def test_up_waits_for_the_proxy_and_down_stops_its_workers(
    state_dir: Path, zk_hosts: str, fake_proxy: Path
) -> None:
    port = free_port()
    up = ok("local", "up", "--dir", str(state_dir), "--zk", zk_hosts, "--mode", "cache", "--groups", "1",
            "--sentinels", "0", "--proxy-port", str(port), "--proxy-workers", "3")
    assert f"redis-cli -p {port}" in up.stdout
    assert redis_ping(port)
    workers = [int(p) for p in fake_proxy.read_text().split()]
    assert len(workers) == 2 and all(running(w) for w in workers)
    proxy = next(p for p in recorded(state_dir) if p.name == "proxy")
    assert proxy.port == port and proxy.alive()
    ok("local", "down", "--dir", str(state_dir))
    assert not proxy.alive()
    assert not any(running(w) for w in workers)  # forked workers go with their proxy


def test_a_proxy_that_dies_at_start_fails_up_and_stops_everything(
    state_dir: Path, zk_hosts: str, zk: KazooClient, fake_proxy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PROXY_MODE", "exit")
    started: list[LocalProcess] = []
    real_add = local.LocalState.add

    def spy(self: local.LocalState, proc: LocalProcess) -> LocalProcess:
        started.append(proc)
        return real_add(self, proc)

    monkeypatch.setattr(local.LocalState, "add", spy)
    result = admin("local", "up", "--dir", str(state_dir), "--zk", zk_hosts, "--mode", "datastore",
                   "--groups", "1", "--sentinels", "0", "--proxy-port", str(free_port()))
    one_error(result, 9, f"the proxy exited at start; see {state_dir.resolve() / 'proxy' / 'proxy.log'}")
    assert "failing on purpose" in (state_dir / "proxy" / "proxy.log").read_text()
    assert [p.name for p in started] == ["redis-g1-master", "redis-g1-replica1", "proxy"]
    assert not any(p.alive() for p in started)
    assert not (state_dir / "state.json").exists()
    assert not ClusterStore(zk, "default").exists()  # a retry can create it again


def test_up_refuses_a_cluster_that_already_exists_in_the_given_zookeeper(state_dir: Path, zk_hosts: str) -> None:
    ok("--zk", zk_hosts, "init", "--mode", "cache")
    result = admin("local", "up", "--dir", str(state_dir), "--zk", zk_hosts, "--sentinels", "0")
    one_error(result, 4, "cluster 'default' already exists in ZooKeeper")
    assert not (state_dir / "state.json").exists()
    assert json.loads(ok("--zk", zk_hosts, "group", "list", "--json").stdout) == []  # left as it was


def test_a_stale_state_of_a_stopped_cluster_is_replaced(state_dir: Path, zk_hosts: str) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = local.LocalState(state_dir, zk=zk_hosts, processes=[
        LocalProcess("redis-g1-master", gone.pid, 1, ["redis-server"], "x.log", started=1),
    ])
    state_dir.mkdir(parents=True)
    stale.save()
    assert json.loads(ok("local", "status", "--dir", str(state_dir), "--json").stdout)["running"] == 0
    assert "DEAD" in ok("local", "status", "--dir", str(state_dir)).stdout
    up = ok("--cluster", "st", "local", "up", "--dir", str(state_dir), "--zk", zk_hosts, "--mode", "cache",
            "--groups", "1", "--sentinels", "0")
    assert "removing the stale state" in up.stdout
    assert all(p.alive() for p in recorded(state_dir))
    ok("local", "down", "--dir", str(state_dir))


@pytest.mark.parametrize(
    "content",
    [
        "garbage",
        "[]",
        '{"version": 1, "zk": "x", "cluster": "default", "processes": [{"pid": 12}]}',
        '{"version": 1, "zk": "x", "cluster": "default", "processes": "all"}',
        '{"version": 99, "processes": []}',
    ],
)
@pytest.mark.parametrize("command", ["up", "down", "status"])
def test_a_garbage_state_file_gives_one_clear_error(state_dir: Path, content: str, command: str) -> None:
    state_dir.mkdir(parents=True)
    (state_dir / "state.json").write_text(content)
    one_error(admin("local", command, "--dir", str(state_dir)), 7, "is not a valid local cluster state")
    assert (state_dir / "state.json").read_text() == content  # left for the user to look at


def test_the_state_dir_defaults_to_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVSTORE_LOCAL_DIR", str(tmp_path / "from-env"))
    one_error(admin("local", "status"), 8, f"no local cluster recorded in {tmp_path / 'from-env'}")
