"""``import --verify``: compare the source's database with the cluster, key counts per type and keys one by one.

Keys are compared by DUMP payload and expire time (PEXPIRETIME, absolute milliseconds); payloads that
differ only by encoding (a hash stored as a table on one side and a listpack on the other) are
then compared by value. A key missing on one side whose expire time on the other is due within
``EXPIRING_MS`` is expiring, not different. Run it while nothing writes to the source (the
cutover's pause), or the writes in flight show up as differences.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from kvstore_admin.importing.resp import Conn, first_error
from kvstore_admin.importing.routing import Router
from kvstore_admin.importing.snapshot import dump_requests

TYPES = ("string", "list", "set", "zset", "hash", "stream")
SCAN_COUNT = 1000
EXPIRING_MS = 2000
EXAMPLES = 20


@dataclass
class Difference:
    key: str
    what: str  # missing, extra, type, value, ttl
    source: str = ""
    cluster: str = ""


@dataclass
class Report:
    counts_source: dict[str, int] = field(default_factory=dict)
    counts_cluster: dict[str, int] = field(default_factory=dict)
    keys_compared: int = 0
    differences: int = 0
    expiring: int = 0
    examples: list[Difference] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.differences == 0

    def add(self, diff: Difference) -> None:
        self.differences += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(diff)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "counts_source": self.counts_source, "counts_cluster": self.counts_cluster,
            "keys_compared": self.keys_compared, "differences": self.differences, "expiring": self.expiring,
            "examples": [asdict(d) for d in self.examples], "seconds": round(self.seconds, 3),
        }


def _show(key: bytes) -> str:
    return key.decode(errors="backslashreplace")


def scan(conn: Conn, kind: str | None = None) -> Iterator[list[bytes]]:
    cursor: bytes = b"0"
    extra = ("TYPE", kind) if kind else ()
    while True:
        cursor, keys = conn.call("SCAN", cursor, "COUNT", SCAN_COUNT, *extra)
        if keys:
            yield keys
        if cursor == b"0":
            return


class Verifier:
    def __init__(self, source: Conn, masters: list[Conn], router: Router, ttl_tolerance_ms: int = 0):
        self.source = source  # with the imported database selected
        self.masters = masters  # in the router's group order
        self.router = router
        self.ttl_tolerance_ms = ttl_tolerance_ms
        self.report = Report()
        self.reported: set[bytes] = set()  # a key counts once, however many checks see it differ

    def _differs(self, key: bytes, what: str, source: str, cluster: str) -> None:
        if key not in self.reported:
            self.reported.add(key)
            self.report.add(Difference(_show(key), what, source=source, cluster=cluster))

    def run(self, sample: int | None) -> Report:
        """Compare counts per type, then ``sample`` random keys of the source (``None``: every key)."""
        started = time.monotonic()
        chosen: list[bytes] = []
        seen = 0
        for kind in TYPES:
            n_source = 0
            for keys in scan(self.source, kind):
                n_source += len(keys)
                if sample is not None:
                    for k in keys:  # reservoir sampling over every key of every type
                        seen += 1
                        if len(chosen) < sample:
                            chosen.append(k)
                        else:
                            j = random.randrange(seen)
                            if j < sample:
                                chosen[j] = k
            n_cluster = sum(len(keys) for conn in self.masters for keys in scan(conn, kind))
            if n_source != n_cluster:
                n_source, n_cluster = self._explain_counts(kind)
            self.report.counts_source[kind] = n_source
            self.report.counts_cluster[kind] = n_cluster
        if sample is None:
            for keys in scan(self.source):
                self._compare(list(dict.fromkeys(keys)))
        else:
            for i in range(0, len(chosen), SCAN_COUNT):
                self._compare(chosen[i : i + SCAN_COUNT])
        self.report.seconds = time.monotonic() - started
        return self.report

    def _explain_counts(self, kind: str) -> tuple[int, int]:
        """Counts differ: find the keys (SCAN may also return a key twice) and report those not expiring."""
        on_source = {k for keys in scan(self.source, kind) for k in keys}
        on_cluster = {k for conn in self.masters for keys in scan(conn, kind) for k in keys}
        now = _now_ms()
        for key in sorted(on_source - on_cluster):
            if self._expiring(self.source, key, now):
                self.report.expiring += 1
                on_source.discard(key)
            else:
                self._differs(key, "missing", source=kind, cluster="no such key")
        for key in sorted(on_cluster - on_source):
            conn = self.masters[self.router.group(key)]
            if self._expiring(conn, key, now):
                self.report.expiring += 1
                on_cluster.discard(key)
            else:
                self._differs(key, "extra", source="no such key", cluster=kind)
        return len(on_source), len(on_cluster)

    def _expiring(self, conn: Conn, key: bytes, now: int) -> bool:
        at = conn.call("PEXPIRETIME", key)
        return at == -2 or (isinstance(at, int) and 0 <= at <= now + EXPIRING_MS)

    def _compare(self, keys: list[bytes]) -> None:
        if not keys:
            return
        source = _dump_all(self.source, keys)
        group = self.router.group
        by_group: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            by_group.setdefault(group(k), []).append(i)
        cluster: list[tuple[Any, Any]] = [(None, -2)] * len(keys)
        for g, idx in by_group.items():
            for i, pair in zip(idx, _dump_all(self.masters[g], [keys[i] for i in idx]), strict=True):
                cluster[i] = pair
        now = _now_ms()
        for key, (s_payload, s_at), (c_payload, c_at) in zip(keys, source, cluster, strict=True):
            self.report.keys_compared += 1
            if s_payload is None and c_payload is None:
                continue
            if s_payload is None or c_payload is None:
                at = c_at if s_payload is None else s_at
                if 0 <= at <= now + EXPIRING_MS:
                    self.report.expiring += 1
                else:
                    what = "extra" if s_payload is None else "missing"
                    self._differs(key, what, source="no such key" if s_payload is None else "present",
                                  cluster="no such key" if c_payload is None else "present")
                continue
            if abs(s_at - c_at) > self.ttl_tolerance_ms or (s_at < 0) != (c_at < 0):
                self._differs(key, "ttl", source=_ttl(s_at), cluster=_ttl(c_at))
                continue
            if s_payload != c_payload:
                s_value = value_of(self.source, key)
                c_value = value_of(self.masters[group(key)], key)
                if s_value != c_value:
                    what = "type" if s_value[0] != c_value[0] else "value"
                    self._differs(key, what, source=_brief(s_value), cluster=_brief(c_value))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ttl(at: int) -> str:
    return "no expire" if at == -1 else f"expires at {at} ms"


def _brief(value: tuple[str, Any]) -> str:
    text = repr(value[1])
    return f"{value[0]} {text[:120]}{'...' if len(text) > 120 else ''}"


def _dump_all(conn: Conn, keys: list[bytes]) -> list[tuple[Any, Any]]:
    conn.send(dump_requests(keys))
    replies = conn.read_many(2 * len(keys))
    error = first_error(replies)
    if error is not None:
        raise error
    return list(zip(replies[0::2], replies[1::2], strict=True))


def value_of(conn: Conn, key: bytes) -> tuple[str, Any]:
    """The key's type and value in a form that does not depend on its encoding."""
    kind = conn.call("TYPE", key).decode()
    if kind == "string":
        return kind, conn.call("GET", key)
    if kind == "list":
        return kind, conn.call("LRANGE", key, 0, -1)
    if kind == "set":
        return kind, sorted(conn.call("SMEMBERS", key))
    if kind == "zset":
        return kind, conn.call("ZRANGE", key, 0, -1, "WITHSCORES")
    if kind == "hash":
        flat = conn.call("HGETALL", key)
        return kind, sorted(zip(flat[::2], flat[1::2], strict=True))
    if kind == "stream":
        groups = conn.call("XINFO", "GROUPS", key)
        # Pending entries without their idle time, which moves with the clock.
        pending = [[(p[0], p[1], p[3]) for p in conn.call("XPENDING", key, g[1], "-", "+", 1 << 30)]
                   for g in groups]
        return kind, (conn.call("XRANGE", key, "-", "+"), groups, pending)
    return kind, None
