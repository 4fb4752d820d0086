"""What each benchmark row sends, how the backends are prepared, and one redis-benchmark run.

Keys: every test uses redis-benchmark's ``-r KEYSPACE`` so ``key:__rand_int__`` becomes
``key:000000012345`` with a fresh random number per occurrence: single-key commands spread over
both backends and the 10 keys of one MSET/MGET land on both backends (both proxies must split
them). The keyspace is pre-filled on *both* backends, so a GET or MGET hits whichever backend a
proxy routes it to, and ``mylist`` (LPUSH, LRANGE_100, a fixed key in redis-benchmark) exists
on both.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from bench.report import CsvError, CsvResult, parse_csv
from kvstore_admin.processes import require_binary


@dataclass(frozen=True)
class Test:
    name: str  # as shown in the table
    args: tuple[str, ...]  # redis-benchmark arguments selecting it (a custom command goes last)


MGET_KEYS = 10
TESTS: tuple[Test, ...] = (
    Test("SET", ("-t", "set")),
    Test("GET", ("-t", "get")),
    Test("INCR", ("-t", "incr")),
    Test("LPUSH", ("-t", "lpush")),
    # redis-benchmark's own lrange_100 first runs an "LPUSH (needed to benchmark LRANGE)" of -n
    # requests, doubling the time; this is the same command on a list we fill ourselves.
    Test("LRANGE_100", ("LRANGE", "mylist", "0", "99")),
    Test("MSET (10 keys)", ("-t", "mset")),  # redis-benchmark's mset is 10 x key:__rand_int__
    Test(f"MGET ({MGET_KEYS} keys)", ("MGET", *["key:__rand_int__"] * MGET_KEYS)),
)
TESTS_BY_NAME = {t.name: t for t in TESTS}
VALUE = b"xxx"  # redis-benchmark's default 3-byte value (-d 3)
LIST_LEN = 200


def benchmark_argv(port: int, test: Test, requests: int, clients: int, pipeline: int,
                   keyspace: int, extra: Sequence[str] = ()) -> list[str]:
    """``extra``: the target's own options (``--tls --cacert CA`` for a TLS port)."""
    return [require_binary("redis-benchmark", "redis-tools"), "-h", "127.0.0.1", "-p", str(port),
            "-c", str(clients), "-n", str(requests), "-P", str(pipeline), "-r", str(keyspace), *extra,
            "--csv", *test.args]


@dataclass
class RunResult:
    result: CsvResult | None
    wall_s: float
    error: str | None


def run_benchmark(port: int, test: Test, requests: int, clients: int, pipeline: int, keyspace: int,
                  timeout: float, extra: Sequence[str] = ()) -> RunResult:
    """One redis-benchmark process; an error reply, a crash or a timeout is an error, never a number.

    redis-benchmark 7 exits 1 on the first error reply ("Error from server: ..."), so a proxy that
    answers with errors cannot pass for a fast one.
    """
    argv = benchmark_argv(port, test, requests, clients, pipeline, keyspace, extra)
    t0 = time.monotonic()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return RunResult(None, time.monotonic() - t0, f"timed out after {timeout:.0f}s")
    wall = time.monotonic() - t0
    if out.returncode != 0:
        msg = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()[-1]
        return RunResult(None, wall, f"redis-benchmark exit {out.returncode}: {msg[:200]}")
    try:
        results = parse_csv(out.stdout)
    except CsvError as exc:
        return RunResult(None, wall, str(exc))
    if len(results) != 1:
        return RunResult(None, wall, f"expected one CSV result, got {[r.test for r in results]}")
    return RunResult(results[0], wall, None)


def benchmark_version() -> str:
    out = subprocess.run([require_binary("redis-benchmark", "redis-tools"), "--version"],
                         capture_output=True, text=True, timeout=10)
    return out.stdout.strip() or "unknown"


# --- backend preparation -------------------------------------------------------------------------


def client(port: int) -> redis.Redis:
    """A plain RESP2 client: no HELLO 3 (redis-py 8's default) and no CLIENT SETINFO on connect,
    neither of which twemproxy understands."""
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, protocol=2,
                       lib_name=None, lib_version=None)


def fill_backend(port: int, keyspace: int) -> None:
    """FLUSHALL, then every ``key:%012d`` of the keyspace and ``mylist`` on this backend."""
    r = client(port)
    try:
        r.flushall()
        chunk = 10_000
        for lo in range(0, keyspace, chunk):
            p = r.pipeline(transaction=False)
            for i in range(lo, min(lo + chunk, keyspace)):
                p.set(f"key:{i:012d}", VALUE)
            p.execute()
        reset_list(port)
    finally:
        r.close()


def reset_list(port: int) -> None:
    """``mylist`` back to LIST_LEN elements, so LPUSH runs do not grow it without bound."""
    r = client(port)
    try:
        p = r.pipeline(transaction=False)
        p.delete("mylist")
        p.rpush("mylist", *[VALUE] * LIST_LEN)
        p.execute()
    finally:
        r.close()


def sanity_check(name: str, port: int, backend_ports: Sequence[int],
                 expected_backend: dict[bytes, int] | None = None) -> str | None:
    """MSET/MGET/DEL 64 keys through a proxy; None if the replies and placement are right.

    ``expected_backend`` maps key -> backend port where the proxy must have put it (kvstore: by
    slot table); without it we only require that both backends got some keys.
    """
    keys = [f"bench:check:{i}".encode() for i in range(64)]
    values = {k: b"v" + k for k in keys}
    proxy = client(port)
    backends = {p: client(p) for p in backend_ports}
    try:
        if proxy.mset(values) is not True:
            return f"{name}: MSET did not answer OK"
        got = proxy.mget(keys)
        if got != [values[k] for k in keys]:
            return f"{name}: MGET of keys just MSET returned wrong values"
        where: dict[bytes, list[int]] = {k: [p for p, b in backends.items() if b.get(k) == values[k]]
                                         for k in keys}
        if any(len(v) != 1 for v in where.values()):
            return f"{name}: some keys are on no backend or on both"
        if expected_backend is not None:
            wrong = [k for k in keys if where[k][0] != expected_backend[k]]
            if wrong:
                return f"{name}: {len(wrong)} keys not on the backend the slot table says"
        used = {v[0] for v in where.values()}
        if len(used) != len(backends):
            return f"{name}: all keys went to one backend"
        if proxy.delete(*keys) != len(keys):
            return f"{name}: DEL did not count every key"
        return None
    except redis.RedisError as exc:
        return f"{name}: {type(exc).__name__}: {exc}"
    finally:
        proxy.close()
        for b in backends.values():
            b.close()
