"""Start the benchmark's processes on 127.0.0.1 and stop every one of them, whatever happens.

    ZooKeeper ── /kvstore/bench: 2 groups (g1, g2), slots split evenly, cache mode
    redis A (g1) ◄──┬── kvstore-proxy --workers 1 ◄── redis-benchmark
    redis B (g2) ◄──┤
                    └── nutcracker (same two servers) ◄── redis-benchmark
    redis A ◄───────────────────────────────────────────── redis-benchmark ("direct")

All processes are started through ``kvstore_admin.processes`` (own session, log file in the run's
temp dir) and registered on a ``contextlib.ExitStack`` the caller owns, so an exception or Ctrl-C
anywhere stops them.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from kvstore_admin.processes import (
    LocalProcess,
    ProcessError,
    free_port,
    require_binary,
    spawn,
    start_redis,
    start_zookeeper,
    wait_until,
)
from kvstore_cluster.keyrules import KeyRule, KeyRules
from kvstore_cluster.model import Group, Groups, Meta, SlotTable, even_split
from kvstore_cluster.store import ClusterStore, connect

CLUSTER = "bench"
ROOT = Path(__file__).resolve().parent.parent


class ProcTree:
    """A process and its descendants, sampled for CPU time, RSS and open fds.

    The proxy may fork workers; everything is summed over the tree. Descendants seen once are
    remembered so they can be stopped at the end even if their parent went away first.
    """

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.known: dict[int, psutil.Process] = {pid: self.root}

    def processes(self) -> list[psutil.Process]:
        procs = [self.root]
        with contextlib.suppress(psutil.Error):
            procs += self.root.children(recursive=True)
        for p in procs:
            self.known.setdefault(p.pid, p)
        return procs

    def _sum(self, fn) -> float:  # type: ignore[no-untyped-def]
        total = 0.0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                total += fn(p)
        return total

    def cpu_seconds(self) -> float:
        return self._sum(lambda p: (lambda t: t.user + t.system)(p.cpu_times()))

    def rss(self) -> int:
        return int(self._sum(lambda p: p.memory_info().rss))

    def num_fds(self) -> int:
        return int(self._sum(lambda p: p.num_fds()))

    def stop_leftovers(self) -> None:
        """SIGTERM, then SIGKILL, any remembered descendant still running (same pid *and* start time)."""
        alive = [p for pid, p in self.known.items() if pid != self.root.pid and p.is_running()]
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, still = psutil.wait_procs(alive, timeout=5)
        for p in still:
            with contextlib.suppress(psutil.Error):
                p.kill()


@dataclass
class Target:
    name: str
    port: int
    proc: LocalProcess | None  # the process whose CPU/RSS we measure (None for direct: see backend)
    tree: ProcTree | None
    note: str = ""
    bench_args: tuple[str, ...] = ()  # redis-benchmark's options for this target (--tls ...)
    tls_port: int = 0  # kvstore-proxy --tls-listen's port, 0 if none


def _stop_later(stack: contextlib.ExitStack, proc: LocalProcess, tree: ProcTree | None = None) -> None:
    def stop() -> None:
        try:
            proc.stop(timeout=10)
        finally:
            if tree is not None:
                tree.stop_leftovers()
    stack.callback(stop)


def start_backends(stack: contextlib.ExitStack, tmp: Path) -> list[LocalProcess]:
    out = []
    for name in ("a", "b"):
        proc = start_redis(tmp / f"redis-{name}", name=f"redis-{name}")
        _stop_later(stack, proc)
        out.append(proc)
    return out


def start_zk_cluster(stack: contextlib.ExitStack, tmp: Path, backends: list[LocalProcess]) -> LocalProcess:
    """ZooKeeper with cluster ``bench``: g1 = backends[0], g2 = backends[1], slots split evenly."""
    zk = start_zookeeper(tmp / "zookeeper")
    _stop_later(stack, zk)
    client = connect(zk.address)
    try:
        groups = Groups(tuple(Group(f"g{i + 1}", b.address) for i, b in enumerate(backends)))
        slots = SlotTable(tuple(even_split(groups.ids())))
        ClusterStore(client, CLUSTER).create(Meta(mode="cache", created_at=time.time()), groups, slots)
    finally:
        client.stop()
        client.close()
    return zk


def add_rules_cluster(zk: LocalProcess, backends: list[LocalProcess], n: int) -> str:
    """Cluster ``bench-rules`` over the same backends as ``bench``, with ``n`` key rules that share the
    benchmark keys' first bytes (``key:``, ``counter:``, ``my``) but match none of them: a key walks the
    rules' trie a few bytes and hashes as without rules, so both clusters route every key alike."""
    name = f"{CLUSTER}-rules"
    client = connect(zk.address)
    try:
        groups = Groups(tuple(Group(f"g{i + 1}", b.address) for i, b in enumerate(backends)))
        slots = SlotTable(tuple(even_split(groups.ids())))
        store = ClusterStore(client, name)
        store.create(Meta(mode="cache", created_at=time.time()), groups, slots)
        stems = [b"key:", b"counter:", b"my"]
        rules = tuple(KeyRule(stems[i % len(stems)] + b"x%d:" % i, b"t%d" % i) for i in range(n))
        store.commit([store.keyrules_op(KeyRules(rules), -1)])
    finally:
        client.stop()
        client.close()
    return name


def nutcracker_config(port: int, backends: list[str], distribution: str = "modula") -> str:
    """twemproxy pool over ``backends`` set up like kvstore-proxy: one connection per backend,
    connected at start, never ejecting a server, no timeout (kvstore's per-request timeout only
    fires on a stuck backend, which never happens here)."""
    servers = "".join(f"   - {addr}:1 g{i + 1}\n" for i, addr in enumerate(backends))
    return (
        "bench:\n"
        f"  listen: 127.0.0.1:{port}\n"
        "  hash: fnv1a_64\n"
        f"  distribution: {distribution}\n"
        "  redis: true\n"
        "  preconnect: true\n"
        "  auto_eject_hosts: false\n"
        "  server_connections: 1\n"
        "  backlog: 1024\n"
        "  client_connections: 0\n"
        "  servers:\n" + servers
    )


def nutcracker_version() -> str:
    import subprocess
    out = subprocess.run([require_binary("nutcracker", "nutcracker"), "--version"],
                         capture_output=True, text=True, timeout=10)
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].removeprefix("This is ") if text else "unknown"


def start_nutcracker(stack: contextlib.ExitStack, tmp: Path, backends: list[LocalProcess],
                     distribution: str = "modula", mbuf: int | None = None) -> Target:
    binary = require_binary("nutcracker", "nutcracker")
    d = tmp / "nutcracker"
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = d / "nutcracker.yml"
    conf.write_text(nutcracker_config(port, [b.address for b in backends], distribution))
    argv = [binary, "-c", str(conf), "-s", str(free_port()), "-a", "127.0.0.1",
            "-o", str(d / "nutcracker.log"), "-v", "4", "-p", str(d / "nutcracker.pid")]
    if mbuf:
        argv += ["-m", str(mbuf)]
    proc = spawn("nutcracker", argv, port, d / "nutcracker.out")
    tree = ProcTree(proc.pid)
    _stop_later(stack, proc, tree)
    _wait_ping(proc, port, 15, d / "nutcracker.log")
    note = f"distribution {distribution}, hash fnv1a_64, server_connections 1, mbuf {mbuf or 16384}"
    return Target("nutcracker", port, proc, tree, note)


def kvstore_runnable() -> bool:
    return (ROOT / "kvstore_proxy" / "__main__.py").exists()


def checkout(ref: str, dest: Path) -> Path:
    """The source tree of git ``ref`` of this repository in ``dest`` (built if it has extensions)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref], capture_output=True)
    if archive.returncode != 0:
        raise ProcessError(f"git archive {ref}: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    if (dest / "setup.py").exists():
        built = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=dest,
                               capture_output=True, text=True)
        if built.returncode != 0:
            raise ProcessError(f"building {ref} failed:\n{built.stderr[-2000:]}")
    return dest


def start_kvstore(stack: contextlib.ExitStack, tmp: Path, zk: LocalProcess,
                  extra_args: list[str] | None = None, name: str = "kvstore", root: Path = ROOT,
                  workers: int = 1, cluster: str = CLUSTER, tls: tuple[str, str] | None = None) -> Target:
    """kvstore-proxy --workers N; ``root`` is the source tree it runs from (``checkout`` for a baseline);
    with ``tls`` (certificate, key) it serves TLS too, on ``Target.tls_port``."""
    if not (root / "kvstore_proxy" / "__main__.py").exists():
        raise ProcessError("kvstore_proxy has no __main__.py yet: run with --targets direct,nutcracker")
    d = tmp / f"{name}-proxy"
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    tls_port = free_port() if tls else 0
    tls_args = ["--tls-listen", f"127.0.0.1:{tls_port}", "--tls-cert-file", tls[0], "--tls-key-file", tls[1]] \
        if tls else []
    argv = [sys.executable, "-m", "kvstore_proxy", "--zk", zk.address, "--cluster", cluster,
            "--listen", f"127.0.0.1:{port}", "--workers", str(workers),
            # like nutcracker here: no client limit, logs warnings only
            "--max-clients", "100000", "--log-level", "warning", *tls_args, *(extra_args or [])]
    # -m from the tree's own directory: its packages come first, before the installed ones
    proc = spawn(f"{name}-proxy", argv, port, d / "kvstore-proxy.log", cwd=root)
    tree = ProcTree(proc.pid)
    _stop_later(stack, proc, tree)
    _wait_ping(proc, port, 30, d / "kvstore-proxy.log")
    if workers > 1:  # every worker must be serving before it is measured
        wait_until(lambda: len(tree.processes()) > workers and all(resp_ping(port) for _ in range(4 * workers)),
                   30, f"{workers} kvstore-proxy workers on port {port}")
    return Target(name, port, proc, tree, " ".join(a for a in argv[argv.index("--workers"):] if a not in tls_args),
                  tls_port=tls_port)


PING = b"*1\r\n$4\r\nPING\r\n"  # multibulk: twemproxy does not parse inline commands


def resp_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(PING)
            return s.recv(64).startswith(b"+PONG\r\n")
    except OSError:
        return False


def _wait_ping(proc: LocalProcess, port: int, timeout: float, log: Path) -> None:
    try:
        wait_until(lambda: resp_ping(port) or not proc.alive(), timeout, f"{proc.name} on port {port}")
    except TimeoutError:
        raise ProcessError(f"{proc.name} did not answer PING on port {port} within {timeout:g}s; "
                           f"see {log}") from None
    if not proc.alive():
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise ProcessError(f"{proc.name} exited at start; see {log}\n{tail}")
