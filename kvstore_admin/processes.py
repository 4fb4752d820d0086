"""Start, probe and stop local ZooKeeper and redis-server processes (used by `local up` and the tests)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ZOOKEEPER_CLASSPATH = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"
ZOOKEEPER_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


class ProcessError(RuntimeError):
    """A local process could not be started or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_cluster_port(host: str = "127.0.0.1") -> int:
    """A free port for a cluster-enabled redis-server: its bus port (port + 10000) must exist and be free.

    Redis refuses to start in cluster mode on a port above 55535, and the kernel's pick is
    often above it.
    """
    for _ in range(200):
        port = free_port(host)
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, port + 10000))
        except OSError:
            continue
        return port
    raise ProcessError("no free port pair (port, port + 10000) for a cluster-enabled redis-server")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; raise ``TimeoutError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - a probe that fails is just "not yet"
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass
class LocalProcess:
    """A process we started: enough to find it again from a state file and stop exactly it."""

    name: str
    pid: int
    port: int
    argv: list[str]
    log: str
    started: int = 0  # kernel start time of the pid, to tell our process from a recycled pid
    # The Popen of a process this interpreter spawned (not a field: never serialised); it keeps the
    # exit status, which reaping by pid would lose.
    _popen = None


    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LocalProcess:
        return cls(**{k: obj[k] for k in ("name", "pid", "port", "argv", "log", "started")})

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """True if our process (not a recycled pid, not a zombie) still runs."""
        stat = _proc_stat(self.pid)
        return stat is not None and stat[0] != "Z" and stat[1] == self.started

    def _collect(self) -> None:
        if self._popen is not None:
            self._popen.poll()
        else:
            _reap(self.pid)

    @property
    def returncode(self) -> int | None:
        """The exit code of a child ``spawn`` started here, once it exited; None otherwise."""
        return None if self._popen is None else self._popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for a child ``spawn`` started here and return its exit code (``subprocess.TimeoutExpired``)."""
        if self._popen is None:
            raise ProcessError(f"{self.name} (pid {self.pid}) is not a child of this process")
        return self._popen.wait(timeout)

    def signal(self, sig: int) -> None:
        self._collect()
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process and whatever it forked (e.g. proxy workers), and nothing else.

        SIGTERM, then SIGKILL after ``timeout``. ``spawn`` makes each process the leader of a new
        session, so its process group is exactly it and its children; the group is signalled only
        after the leader is verified to be our process (pid + start time), and while the group is
        non-empty its id cannot be reused by an unrelated process.
        """
        self._collect()
        if not self.alive():
            return
        try:
            leader = os.getpgid(self.pid) == self.pid
        except ProcessLookupError:
            return
        kill = os.killpg if leader else os.kill

        def gone() -> bool:
            self._collect()
            return not _group_members(self.pid) if leader else not self.alive()

        try:
            kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            wait_until(gone, timeout, f"{self.name} to exit")
        except TimeoutError:
            try:
                kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            wait_until(gone, 5.0, f"{self.name} to die")


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(entry))
    return out


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of ``pid`` from /proc, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[19])


def _reap(pid: int) -> None:
    # A child of ours that exited stays a zombie until waited for; only the parent can reap it,
    # so ChildProcessError (e.g. `local down` in another process) is expected.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def spawn(name: str, argv: list[str], port: int, log: Path, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> LocalProcess:
    """Start ``argv`` detached (own session, output to ``log``) so it outlives the caller."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=cwd, env=env, start_new_session=True,
        )
    stat = _proc_stat(proc.pid)
    local = LocalProcess(name=name, pid=proc.pid, port=port, argv=argv, log=str(log),
                         started=stat[1] if stat else 0)
    setattr(local, "_popen", proc)  # noqa: B010 - not a dataclass field
    return local


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ProcessError(f"{name} not found: install it with 'apt-get install -y {package}'")
    return path


def tcp_answers(port: int, payload: bytes, expect: bytes, host: str = "127.0.0.1") -> bool:
    with socket.create_connection((host, port), timeout=1.0) as s:
        s.sendall(payload)
        return expect in s.recv(4096)


# --- ZooKeeper -----------------------------------------------------------------------------------


def zookeeper_ready(port: int) -> bool:
    # "srvr" is the one four-letter word ZooKeeper 3.5+ allows by default.
    try:
        return tcp_answers(port, b"srvr", b"Mode: standalone")
    except OSError:
        return False


def start_zookeeper(data_dir: Path, port: int | None = None, timeout: float = 30.0) -> LocalProcess:
    """Start a single-node ZooKeeper (Debian's package) on 127.0.0.1 with its own data dir."""
    java = require_binary("java", "zookeeper")
    if not Path("/usr/share/java/zookeeper.jar").exists():
        raise ProcessError("ZooKeeper not found: install it with 'apt-get install -y zookeeper'")
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "data").mkdir(exist_ok=True)
    cfg = data_dir / "zoo.cfg"
    cfg.write_text(
        "tickTime=500\n"
        "initLimit=10\nsyncLimit=5\n"
        f"dataDir={data_dir / 'data'}\n"
        f"clientPort={port}\nclientPortAddress=127.0.0.1\n"
        "admin.enableServer=false\n"
        "maxClientCnxns=0\n"
        "minSessionTimeout=1000\nmaxSessionTimeout=60000\n"
        "4lw.commands.whitelist=srvr,ruok,stat\n"
    )
    argv = [
        java, "-Xmx256m", "-XX:+UseSerialGC", "-Dzookeeper.log.dir=" + str(data_dir),
        "-Dzookeeper.root.logger=WARN,CONSOLE", "-cp", ZOOKEEPER_CLASSPATH, ZOOKEEPER_MAIN, str(cfg),
    ]
    proc = spawn("zookeeper", argv, port, data_dir / "zookeeper.log")
    try:
        wait_until(lambda: zookeeper_ready(port) or not proc.alive(), timeout, f"ZooKeeper on port {port}")
    except TimeoutError:
        proc.stop()
        raise ProcessError(f"ZooKeeper did not start on port {port}; see {proc.log}") from None
    if not proc.alive():
        raise ProcessError(f"ZooKeeper exited at start; see {proc.log}")
    return proc


# --- Redis -----------------------------------------------------------------------------------------


def redis_ping(port: int, password: str | None = None, host: str = "127.0.0.1",
               tls_context: ssl.SSLContext | None = None) -> bool:
    try:
        auth = b"" if password is None else _resp(b"AUTH", password.encode())
        with socket.create_connection((host, port), timeout=1.0) as raw:
            s = tls_context.wrap_socket(raw, server_hostname=host) if tls_context is not None else raw
            s.sendall(auth + b"PING\r\n")
            data = b""
            while b"PONG" not in data and not data.startswith(b"-") and len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return b"+PONG" in data
    except OSError:
        return False


def _resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


def redis_config(port: int, data_dir: Path, *, password: str | None = None,
                 replicaof: str | None = None, extra: dict[str, str] | None = None) -> str:
    lines = {
        "port": str(port),
        "bind": "127.0.0.1",
        "dir": str(data_dir),
        "daemonize": "no",
        "save": '""',
        "appendonly": "no",
        "protected-mode": "no",
        "loglevel": "warning",
        "logfile": '""',
        "dbfilename": "dump.rdb",
    }
    if password:
        lines["requirepass"] = password
        lines["masterauth"] = password
    if replicaof:
        host, _, rport = replicaof.rpartition(":")
        lines["replicaof"] = f"{host} {rport}"
    lines.update(extra or {})
    return "".join(f"{k} {v}\n" for k, v in lines.items())


def tls_config(cert: str, key: str, ca: str) -> dict[str, str]:
    """redis.conf lines for a node that speaks TLS only (``port`` becomes its ``tls-port``), requires
    client certificates signed by ``ca``, and replicates and migrates over TLS too."""
    return {"tls-cert-file": cert, "tls-key-file": key, "tls-ca-cert-file": ca, "tls-auth-clients": "yes",
            "tls-replication": "yes", "tls-cluster": "yes"}


def start_redis(data_dir: Path, port: int | None = None, *, name: str | None = None,
                password: str | None = None, replicaof: str | None = None,
                extra: dict[str, str] | None = None, timeout: float = 15.0,
                tls_context: ssl.SSLContext | None = None) -> LocalProcess:
    """Start a redis-server on 127.0.0.1 with its own dir and config file; wait for PING.

    With ``extra`` from :func:`tls_config`, the node listens with TLS only, on ``port`` (unless
    ``extra`` has its own ``tls-port``: then both); it is pinged with ``tls_context`` (which must
    carry a client certificate).
    """
    binary = require_binary("redis-server", "redis-server")
    if port is None and (extra or {}).get("cluster-enabled") == "yes":
        port = free_cluster_port()
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "redis.conf"
    if extra and "tls-cert-file" in extra and "tls-port" not in extra:
        extra = {**extra, "port": "0", "tls-port": str(port)}
    conf.write_text(redis_config(port, data_dir, password=password, replicaof=replicaof, extra=extra))
    proc = spawn(name or f"redis-{port}", [binary, str(conf)], port, data_dir / "redis.log")
    try:
        wait_until(lambda: redis_ping(port, password, tls_context=tls_context) or not proc.alive(), timeout,
                   f"redis on port {port}")
    except TimeoutError:
        proc.stop()
        raise ProcessError(f"redis-server did not start on port {port}; see {proc.log}") from None
    if not proc.alive():
        raise ProcessError(f"redis-server exited at start on port {port}; see {proc.log}")
    return proc


# --- kvstore services ------------------------------------------------------------------------------


def start_proxy(zk: str, cluster: str, log: Path, *extra: str, port: int | None = None, workers: int = 1,
                timeout: float = 30.0, module: str = "kvstore_proxy",
                record: Callable[[LocalProcess], object] | None = None,
                tls_context: ssl.SSLContext | None = None) -> LocalProcess:
    """Start ``python -m kvstore_proxy`` on 127.0.0.1 and wait until it answers PING (over TLS with
    ``tls_context``: ``extra`` then has ``--listen none --tls-listen 127.0.0.1:PORT``).

    ``record`` is called as soon as the process exists, so a caller killed during the wait can
    still find and stop it.
    """
    port = port or free_port()
    argv = [sys.executable, "-m", module, "--zk", zk, "--cluster", cluster,
            "--listen", f"127.0.0.1:{port}", "--workers", str(workers), *extra]
    proc = spawn("proxy", argv, port, log)
    if record is not None:
        record(proc)
    password = extra[extra.index("--requirepass") + 1] if "--requirepass" in extra else None
    try:
        wait_until(lambda: redis_ping(port, password, tls_context=tls_context) or not proc.alive(), timeout,
                   f"the proxy on port {port}")
    except TimeoutError:
        proc.stop()
        raise ProcessError(f"the proxy did not answer PING on port {port} within {timeout:g}s; "
                           f"see {proc.log}") from None
    if not proc.alive():
        raise ProcessError(f"the proxy exited at start; see {proc.log}")
    return proc


def sentinel_argv(zk: str, cluster: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kvstore_sentinel", "--zk", zk, "--cluster", cluster, *extra]
