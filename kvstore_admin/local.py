"""A whole cluster on this machine (`local up|down|status`): ZooKeeper, redis-servers, proxy, sentinels.

Every process started is recorded in ``<dir>/state.json`` right after it starts, so ``down``
stops exactly those (pid + kernel start time, see ``LocalProcess.alive``) even after a
failure midway, and nothing else. ``down`` keeps the logs and data dirs under ``<dir>`` for
inspection; the next ``up`` wipes each process's dir before starting it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvstore_admin import groups as ops
from kvstore_admin.errors import CORRUPT_DATA, AdminError, LocalStateError, ProcessFailed
from kvstore_admin.processes import (
    LocalProcess,
    ProcessError,
    free_port,
    sentinel_argv,
    spawn,
    start_proxy,
    start_redis,
    start_zookeeper,
    wait_until,
)
from kvstore_cluster.ops.rebalance import assign_unowned_slots
from kvstore_cluster.store import ClusterExists, ClusterNotFound, ClusterStore, connect

STATE_FILE = "state.json"
LOCK_FILE = ".lock"
STATE_VERSION = 1
PROXY_MODULE = "kvstore_proxy"
PROXY_READY_TIMEOUT = 30.0
SENTINEL_READY_TIMEOUT = 15.0
# The default 5 s delay before a diskless full sync would make every replica wait for nothing.
REDIS_EXTRA = {"repl-diskless-sync-delay": "0"}
# Datastore mode with replicas: a master takes a write only while a replica acknowledged the
# stream within the last second, so an isolated or paused master stops accepting writes that a
# failover would then throw away (docs/contracts.md). Never without replicas: it would refuse all.
DATASTORE_REDIS_EXTRA = {**REDIS_EXTRA, "min-replicas-to-write": "1", "min-replicas-max-lag": "1"}

Echo = Callable[[str], None]


@dataclass
class LocalState:
    """What `up` recorded: where ZooKeeper is, which cluster, and every process it started."""

    dir: Path
    zk: str = ""
    cluster: str = "default"
    mode: str = "datastore"
    proxy_port: int | None = None
    external_zk: bool = False  # --zk given: the cluster lives in somebody else's ZooKeeper
    processes: list[LocalProcess] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.dir / STATE_FILE

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION, "zk": self.zk, "cluster": self.cluster, "mode": self.mode,
            "proxy_port": self.proxy_port, "external_zk": self.external_zk,
            "processes": [p.to_json() for p in self.processes],
        }

    @classmethod
    def from_json(cls, directory: Path, obj: Any) -> LocalState:
        if not isinstance(obj, dict) or obj.get("version") != STATE_VERSION:
            raise ValueError(f"expected a JSON object with version {STATE_VERSION}")
        procs = obj.get("processes")
        if not isinstance(procs, list):
            raise ValueError("'processes' must be a list")
        processes = []
        for item in procs:
            try:
                proc = LocalProcess.from_json(item)
            except (KeyError, TypeError) as exc:
                raise ValueError(f"bad process entry {item!r} ({exc})") from None
            if not (isinstance(proc.pid, int) and proc.pid > 0 and isinstance(proc.started, int)
                    and isinstance(proc.port, int) and isinstance(proc.name, str)):
                raise ValueError(f"bad process entry {item!r}")
            processes.append(proc)
        proxy_port = obj.get("proxy_port")
        if not (isinstance(obj.get("zk"), str) and isinstance(obj.get("cluster"), str)
                and (proxy_port is None or isinstance(proxy_port, int))):
            raise ValueError("'zk', 'cluster' must be strings and 'proxy_port' a number or null")
        return cls(directory, obj["zk"], obj["cluster"], str(obj.get("mode", "")), proxy_port,
                   bool(obj.get("external_zk", False)), processes)

    def save(self) -> None:
        # Write then rename: a crash never leaves a half-written state file behind.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, self.path)

    def add(self, proc: LocalProcess) -> LocalProcess:
        self.processes.append(proc)
        self.save()
        return proc

    def alive(self) -> list[LocalProcess]:
        return [p for p in self.processes if p.alive()]


def load_state(directory: Path) -> LocalState | None:
    """The recorded state, ``None`` if there is none; ``AdminError`` if the file is garbage."""
    path = directory / STATE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AdminError(f"cannot read {path}: {exc}", CORRUPT_DATA) from None
    try:
        return LocalState.from_json(directory, json.loads(text))
    except ValueError as exc:
        raise AdminError(
            f"{path} is not a valid local cluster state ({exc}); "
            "stop its processes by hand if any run, then delete the file",
            CORRUPT_DATA,
        ) from None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One `up`/`down` at a time per state dir."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LocalStateError(f"another 'kvstore-admin local' command is working on {directory}") from None
        yield


@dataclass
class UpOptions:
    directory: Path
    cluster: str = "default"
    mode: str = "datastore"
    groups: int = 3
    replicas: int | None = None  # None: 1 in datastore mode, 0 in cache mode
    zk: str | None = None  # an existing ZooKeeper; None starts one
    zk_timeout: float = 5.0
    proxy_port: int | None = None
    proxy_workers: int = 1
    sentinels: int = 1


def up(opts: UpOptions, echo: Echo) -> LocalState:
    """Start a whole cluster; on any failure stop what was started and re-raise."""
    directory = opts.directory.resolve()
    replicas = opts.replicas if opts.replicas is not None else (1 if opts.mode == "datastore" else 0)
    if opts.groups < 1 or replicas < 0 or opts.sentinels < 0 or opts.proxy_workers < 1:
        raise AdminError("--groups and --proxy-workers must be at least 1, --replicas and --sentinels at least 0")
    with _locked(directory):
        old = load_state(directory)
        if old is not None:
            running = old.alive()
            if running:
                raise LocalStateError(
                    f"a local cluster is already running in {directory} ({len(running)} processes); "
                    "use 'kvstore-admin local down' first"
                )
            echo(f"removing the stale state of a stopped cluster in {directory}")
            old.path.unlink()
        state = LocalState(directory, zk=opts.zk or "", cluster=opts.cluster, mode=opts.mode,
                           external_zk=bool(opts.zk))
        state.save()
        try:
            _start_all(state, opts, replicas, echo)
        except BaseException:
            echo("start failed; stopping what was started")
            _stop_all(state, echo)
            state.path.unlink(missing_ok=True)
            raise
        return state


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def _start_all(state: LocalState, opts: UpOptions, replicas: int, echo: Echo) -> None:
    d = state.dir
    try:
        if not opts.zk:
            zk = state.add(start_zookeeper(_fresh_dir(d / "zookeeper")))
            state.zk = zk.address
            state.save()
            echo(f"started zookeeper on {zk.address} (pid {zk.pid})")
        client = connect(state.zk, opts.zk_timeout)
    except ProcessError as exc:
        raise ProcessFailed(str(exc)) from None
    try:
        store = ClusterStore(client, state.cluster)
        if store.exists():
            raise ClusterExists(f"cluster {state.cluster!r} already exists in ZooKeeper {state.zk}; "
                                "pick another --cluster")
        members: list[tuple[str, list[str]]] = []
        extra = DATASTORE_REDIS_EXTRA if opts.mode == "datastore" and replicas > 0 else REDIS_EXTRA
        for i in range(1, opts.groups + 1):
            gid = f"g{i}"
            names = [f"redis-{gid}-master", *(f"redis-{gid}-replica{j}" for j in range(1, replicas + 1))]
            addresses = []
            for name in names:
                try:
                    proc = start_redis(_fresh_dir(d / name), name=name, extra=extra)
                except ProcessError as exc:
                    raise ProcessFailed(str(exc)) from None
                state.add(proc)
                addresses.append(proc.address)
                echo(f"started {name} on {proc.address} (pid {proc.pid})")
            members.append((gid, addresses))
        ops.init_cluster(store, opts.mode)
        try:
            for gid, (master, *reps) in members:
                ops.add_group(store, master, reps, group_id=gid)
            assign_unowned_slots(store)
            echo(f"created cluster {state.cluster!r} ({opts.mode} mode): {opts.groups} groups, "
                 f"{replicas} replica(s) each, all slots assigned")
            _start_services(state, store, opts, echo)
        except BaseException:
            if opts.zk:
                # Our ZooKeeper dies with the rest; in somebody else's, leave no half cluster behind.
                with contextlib.suppress(Exception):
                    store.destroy()
            raise
    finally:
        client.stop()
        client.close()


def _start_services(state: LocalState, store: ClusterStore, opts: UpOptions, echo: Echo) -> None:
    _start_proxy(state, opts, echo)
    for i in range(1, opts.sentinels + 1):
        # A majority of the sentinels must agree before the leader acts.
        _start_sentinel(state, store, i, opts.sentinels // 2 + 1, echo)


def _start_proxy(state: LocalState, opts: UpOptions, echo: Echo) -> None:
    port = opts.proxy_port or free_port()
    log = _fresh_dir(state.dir / "proxy") / "proxy.log"
    try:
        proc = start_proxy(state.zk, state.cluster, log, port=port, workers=opts.proxy_workers,
                           timeout=PROXY_READY_TIMEOUT, module=PROXY_MODULE, record=state.add)
    except ProcessError as exc:
        raise ProcessFailed(str(exc)) from None
    state.proxy_port = port
    state.save()
    echo(f"started proxy on 127.0.0.1:{port} (pid {proc.pid}, {opts.proxy_workers} worker(s))")


def _start_sentinel(state: LocalState, store: ClusterStore, n: int, quorum: int, echo: Echo) -> None:
    name = f"sentinel-{n}"
    argv = sentinel_argv(state.zk, state.cluster, "--quorum", str(quorum))
    proc = state.add(spawn(name, argv, 0, _fresh_dir(state.dir / name) / "sentinel.log"))
    # A sentinel has no port; it is ready once it registered under sentinels/.
    try:
        wait_until(lambda: len(store.sentinel_views().items) >= n or not proc.alive(), SENTINEL_READY_TIMEOUT, name)
    except TimeoutError:
        echo(f"note: {name} has not registered in ZooKeeper after {SENTINEL_READY_TIMEOUT:g}s; see {proc.log}")
    if not proc.alive():
        raise ProcessFailed(f"{name} exited at start; see {proc.log}")
    echo(f"started {name} (pid {proc.pid})")


# --- stopping ----------------------------------------------------------------------------------


def _stop_all(state: LocalState, echo: Echo) -> list[LocalProcess]:
    stopped = []
    # Reverse start order: sentinels and proxy before the nodes they watch, ZooKeeper last.
    for proc in reversed(state.processes):
        if proc.alive():
            proc.stop()
            stopped.append(proc)
            echo(f"stopped {proc.name} (pid {proc.pid})")
    return stopped


def down(directory: Path, echo: Echo, zk_timeout: float = 5.0) -> list[LocalProcess] | None:
    """Stop every recorded process and forget the state; ``None`` if nothing was recorded.

    With ``--zk`` (somebody else's ZooKeeper) the cluster ``up`` created there is deleted
    too, so that the next ``up`` can create it again; our own ZooKeeper just stops.
    """
    directory = directory.resolve()
    if not (directory / STATE_FILE).exists():
        return None
    with _locked(directory):
        state = load_state(directory)
        if state is None:
            return None
        stopped = _stop_all(state, echo)
        state.path.unlink(missing_ok=True)
        if state.external_zk:
            client = connect(state.zk, zk_timeout)
            try:
                with contextlib.suppress(ClusterNotFound):
                    ClusterStore(client, state.cluster).destroy()
                    echo(f"deleted cluster {state.cluster!r} from ZooKeeper {state.zk}")
            finally:
                client.stop()
                client.close()
        return stopped


def status(directory: Path) -> dict[str, Any] | None:
    """The recorded processes and whether each still runs; ``None`` if nothing is recorded."""
    state = load_state(directory.resolve())
    if state is None:
        return None
    procs = [{**p.to_json(), "alive": p.alive()} for p in state.processes]
    return {
        "dir": str(state.dir), "zk": state.zk, "cluster": state.cluster, "mode": state.mode,
        "proxy_port": state.proxy_port, "processes": procs,
        "running": sum(p["alive"] for p in procs), "recorded": len(procs),
        "connect": connect_lines(state),
    }


def connect_lines(state: LocalState) -> list[str]:
    lines = []
    if state.proxy_port:
        lines.append(f"connect:   redis-cli -p {state.proxy_port}")
    else:
        masters = [p for p in state.processes if p.name.endswith("-master")]
        lines.append("connect:   no proxy yet; each group's master directly: "
                     + ", ".join(f"redis-cli -p {p.port}" for p in masters))
    lines += [
        f"zookeeper: {state.zk}   cluster: {state.cluster}",
        f"status:    kvstore-admin --zk {state.zk} --cluster {state.cluster} status",
        f"stop:      kvstore-admin local down --dir {state.dir}",
    ]
    return lines

