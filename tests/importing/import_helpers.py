"""Import test helpers: run ``kvstore-admin import`` (in-process or as a process), fill a source, write to it."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from click.testing import CliRunner, Result

from kvstore_admin.cli import cli
from kvstore_cluster.slots import key_slot

FAST_SOURCE = {"repl-diskless-sync-delay": "0", "repl-backlog-size": "64mb"}
ADMIN = [sys.executable, "-c", "from kvstore_admin.cli import main; main()"]


def admin(zk_hosts: str, cluster: str, *args: str) -> Result:
    result = CliRunner().invoke(cli, ["--zk", zk_hosts, "--cluster", cluster, *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def admin_process(zk_hosts: str, cluster: str, *args: str, env: dict[str, str] | None = None,
                  timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ADMIN, "--zk", zk_hosts, "--cluster", cluster, *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def start_admin(zk_hosts: str, cluster: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([*ADMIN, "--zk", zk_hosts, "--cluster", cluster, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


def fill(r: redis.Redis, n: int = 2000, big: int = 0) -> None:
    """Keys of every type, some with TTLs, in hash-tag-free names spread over every group; ``big`` elements in
    one big list and one big hash."""
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.set(f"s:{i}", f"value-{i}-" + "x" * (i % 120))
        if i % 7 == 0:
            pipe.pexpire(f"s:{i}", 600_000 + i)
    for i in range(n // 20):
        pipe.rpush(f"l:{i}", *range(i % 30 + 1))
        pipe.sadd(f"set:{i}", *[f"m{j}" for j in range(i % 20 + 1)])
        pipe.sadd(f"iset:{i}", *range(i % 10 + 1))
        pipe.zadd(f"z:{i}", {f"m{j}": j * 1.5 for j in range(i % 25 + 1)})
        pipe.hset(f"h:{i}", mapping={f"f{j}": j for j in range(i % 40 + 1)})
        pipe.xadd(f"x:{i}", {"n": i})
    pipe.execute()
    r.xgroup_create("x:0", "workers", id="0")
    r.xreadgroup("workers", "alice", {"x:0": ">"})
    r.set("ttl:short", "soon", px=900_000)
    r.set("counter:start", 41)
    if big:
        for start in range(0, big, 5000):
            r.rpush("big:list", *range(start, min(big, start + 5000)))
            r.hset("big:hash", mapping={f"f{j}": "v" * 20 for j in range(start, min(big, start + 5000))})


def keys_in_other_groups(router_groups: list[int], prefix: str) -> tuple[str, str]:
    """Two key names of different slot ranges (so different groups of a 3-group cluster split evenly)."""
    a = f"{prefix}:a"
    i = 0
    while True:
        b = f"{prefix}:b{i}"
        if abs(key_slot(b.encode()) - key_slot(a.encode())) > 8000:
            return a, b
        i += 1


@dataclass
class Writer:
    """Writes to the source while an import runs; remembers what the source acknowledged."""

    port: int
    password: str | None = None
    counters: dict[str, int] = field(default_factory=dict)  # counter key -> last value INCR returned
    pushed: int = 0  # list pushes acknowledged
    ops: int = 0
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Writer:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        r = redis.Redis(port=self.port, password=self.password, socket_timeout=60)
        rnd = random.Random(7)
        a, b = keys_in_other_groups([], "mv")
        i = 0
        try:
            while not self.stop.is_set():
                key = f"ctr:{i % 8}"
                self.counters[key] = r.incr(key)
                r.rpush("queue", i)
                self.pushed += 1
                r.set(f"tmp:{i % 300}", i, px=rnd.choice([30, 150, 600_000]))  # some expire during the import
                r.delete(f"s:{rnd.randrange(2000)}")
                r.hincrby("h:1", "hits", 1)
                r.zincrby("z:1", 1, "m0")
                if i % 10 == 0:
                    r.mset({f"ms:{i % 50}": i, f"ms:{(i + 25) % 50}": i})  # spans groups: split
                    r.set(a, i)
                    r.rename(a, b)  # spans groups: the value moves from one group to another
                    r.sadd("src:set", i, i + 1)
                    r.smove("src:set", "{dst}:set", i)
                    r.eval("redis.call('incr', KEYS[1]); redis.call('lpush', KEYS[2], ARGV[1])", 2,
                           "script:ctr", "script:list", i)  # a MULTI/EXEC in the stream
                    r.expire(f"s:{rnd.randrange(2000)}", 900)
                self.ops += 10
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            if not self.stop.is_set():
                self.error = exc

    def wait_ops(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.ops < n:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"the writer made {self.ops} ops, not {n}"
            time.sleep(0.02)

    def finish(self, timeout: float = 60) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        assert self.error is None, self.error
