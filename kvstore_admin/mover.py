"""The key mover: SCAN a source master, MIGRATE the keys of given slots to their targets in batches.

One scanner thread per source feeds batches of keys to ``parallel`` MIGRATE workers, so the
next SCAN runs while earlier batches move. MIGRATE is never given REPLACE: a key that already
exists on the target (BUSYKEY) stops the move and is reported, nothing is overwritten.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvstore_admin.errors import RESHARD_STOPPED, AdminError, NodeError
from kvstore_admin.nodes import failure
from kvstore_cluster.model import parse_address
from kvstore_cluster.slots import SLOT_COUNT, key_slot

SCAN_COUNT = 1000
MIGRATE_TIMEOUT_MS = 10_000
MAX_PASSES = 20  # a source that keeps gaining keys of moving slots means a proxy ignores the mark


class MoveError(AdminError):
    """MIGRATE failed (BUSYKEY, target down, ...): the reshard stops, its state stays resumable."""

    code = RESHARD_STOPPED


def connect(address: str, timeout: float = 15.0, password: str | None = None) -> redis.Redis:
    """A binary-safe client without redis-py's silent retries (a retry could repeat a MIGRATE)."""
    host, port = parse_address(address)
    return redis.Redis(host=host, port=port, password=password or None, socket_timeout=timeout,
                       socket_connect_timeout=min(timeout, 5.0), retry=Retry(NoBackoff(), 0))


def scan_keys(conn: redis.Redis, count: int = SCAN_COUNT) -> Iterator[list[bytes]]:
    """Every key of the node, one SCAN reply at a time."""
    cursor = 0
    while True:
        cursor, keys = conn.scan(cursor, count=count)
        if keys:
            yield keys
        if int(cursor) == 0:
            return


@dataclass
class Progress:
    """Counters the movers bump and the progress bar reads (ints: updates are atomic enough under the GIL)."""

    keys: int = 0
    scanned: int = 0
    errors: list[str] = field(default_factory=list)


class SlotMap:
    """slot -> target index (0 = not moving), a bytearray so the per-key test is one index."""

    def __init__(self, slot_targets: dict[int, str]):
        self.targets = sorted(set(slot_targets.values()))
        self.index = bytearray(SLOT_COUNT)
        for s, t in slot_targets.items():
            self.index[s] = self.targets.index(t) + 1

    def split(self, keys: list[bytes]) -> dict[int, list[bytes]]:
        """Keys of moving slots, by target index."""
        out: dict[int, list[bytes]] = {}
        index = self.index
        for k in keys:
            t = index[key_slot(k)]
            if t:
                out.setdefault(t, []).append(k)
        return out


def _busy_keys(source: redis.Redis, target: str, keys: list[bytes], password: str | None) -> list[bytes]:
    """Keys of a failed MIGRATE that are on both nodes (the ones MIGRATE moved are gone from the source)."""

    def existing(conn: redis.Redis) -> list[bool]:
        pipe = conn.pipeline(transaction=False)
        for k in keys:
            pipe.exists(k)
        return [bool(n) for n in pipe.execute()]

    try:
        conn = connect(target, 5.0, password)
        try:
            on_target = existing(conn)
        finally:
            conn.close()
        on_source = existing(source)
    except redis.RedisError:
        return []
    return [k for k, t, s in zip(keys, on_target, on_source, strict=True) if t and s]


def migrate_args(target: str, keys: list[bytes], timeout_ms: int, password: str | None = None) -> list[object]:
    """``MIGRATE host port "" 0 timeout [AUTH password] KEYS ...`` (the target checks the password)."""
    host, port = parse_address(target)
    auth: list[object] = ["AUTH", password] if password else []
    return ["MIGRATE", host, port, "", 0, timeout_ms, *auth, "KEYS", *keys]


def migrate(conn: redis.Redis, source: str, target: str, keys: list[bytes], timeout_ms: int,
            password: str | None = None) -> None:
    """MIGRATE ``keys`` from ``source`` to ``target``; NOKEY (already gone) is fine; any error raises MoveError."""
    try:
        conn.execute_command(*migrate_args(target, keys, timeout_ms, password))
    except redis.ResponseError as exc:
        text = str(exc)
        if "BUSYKEY" in text:
            busy = _busy_keys(conn, target, keys, password)
            shown = ", ".join(repr(k.decode(errors="backslashreplace")) for k in busy[:5]) or "(unknown)"
            more = f" and {len(busy) - 5} more" if len(busy) > 5 else ""
            raise MoveError(
                f"MIGRATE {source} -> {target} refused: the target already holds key(s) {shown}{more} (BUSYKEY). "
                "Nothing was overwritten. Decide which copy is right, delete the other, then run "
                "'kvstore-admin reshard --resume' (or --abort)"
            ) from None
        raise MoveError(f"MIGRATE {source} -> {target} failed: {text}. The reshard stopped; fix the cause and "
                        "run 'kvstore-admin reshard --resume' (an IOERR/timeout may leave a key on both nodes, "
                        "which the next attempt reports as BUSYKEY)") from None
    except redis.RedisError as exc:
        if isinstance(exc, redis.AuthenticationError):
            raise MoveError(f"{failure(source, 'MIGRATE', exc, password)}; the reshard stopped, resume it with "
                            "'kvstore-admin reshard --resume'") from None
        raise MoveError(f"MIGRATE {source} -> {target} failed: {exc or type(exc).__name__}. The reshard "
                        "stopped; run 'kvstore-admin reshard --resume' once the nodes answer") from None


def _unique(keys: list[bytes]) -> list[bytes]:
    # SCAN may return a key twice (while the source's table rehashes); a key given twice to
    # one MIGRATE is restored twice on the target, and the second RESTORE fails with BUSYKEY.
    return list(dict.fromkeys(keys))


def _one_pass(source: str, slots: SlotMap, target_addrs: list[str], batch: int, parallel: int,
              timeout_ms: int, progress: Progress, on_batch: Callable[[], None] | None,
              password: str | None, still_allowed: Callable[[], None] | None = None) -> int:
    """One SCAN over ``source`` moving what it finds; returns how many keys of moving slots it saw."""
    work: queue.Queue[tuple[int, list[bytes]] | None] = queue.Queue(maxsize=parallel * 4)
    failed = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        conn = connect(source, timeout_ms / 1000 + 5, password)
        try:
            while True:
                item = work.get()
                if item is None:
                    return
                if failed.is_set():
                    continue  # drain the queue so the scanner never blocks
                t, keys = item
                try:
                    if still_allowed is not None:
                        still_allowed()  # raises once these slots may no longer move
                    migrate(conn, source, target_addrs[t - 1], keys, timeout_ms, password)
                except BaseException as exc:  # noqa: BLE001 - reported by the caller
                    errors.append(exc)
                    failed.set()
                    continue
                progress.keys += len(keys)
                if on_batch is not None:
                    on_batch()
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, name=f"migrate-{source}-{i}", daemon=True) for i in range(parallel)]
    for th in threads:
        th.start()
    seen = 0
    try:
        conn = connect(source, password=password)
        try:
            pending: dict[int, list[bytes]] = {}
            for keys in scan_keys(conn):
                if failed.is_set():
                    break
                progress.scanned += len(keys)
                for t, ks in slots.split(keys).items():
                    seen += len(ks)
                    buf = pending.setdefault(t, [])
                    buf.extend(ks)
                    while len(buf) >= batch:
                        work.put((t, _unique(buf[:batch])))
                        del buf[:batch]
            for t, buf in pending.items():
                if buf and not failed.is_set():
                    work.put((t, _unique(buf)))
        except redis.RedisError as exc:
            if isinstance(exc, redis.AuthenticationError):
                raise NodeError(f"{failure(source, 'SCAN', exc, password)}; the reshard stopped, resume it with "
                                "'kvstore-admin reshard --resume'") from None
            raise NodeError(f"SCAN on {source} failed ({exc or type(exc).__name__}); the reshard stopped, "
                            "run 'kvstore-admin reshard --resume' once it answers") from None
        finally:
            conn.close()
    finally:
        for _ in threads:
            work.put(None)
        for th in threads:
            th.join()
    if errors:
        raise errors[0]
    return seen


def move_slots(source: str, slot_targets: dict[int, str], *, batch: int = 100, parallel: int = 4,
               timeout_ms: int = MIGRATE_TIMEOUT_MS, progress: Progress | None = None,
               on_batch: Callable[[], None] | None = None, password: str | None = None,
               still_allowed: Callable[[], None] | None = None) -> int:
    """Move every key of ``slot_targets``'s slots from ``source`` to their target address.

    Repeats full SCAN passes until one finds no key of those slots (a pass may miss keys written
    meanwhile); returns the number of keys moved. ``still_allowed`` runs before every MIGRATE and
    stops the move by raising.
    """
    progress = progress if progress is not None else Progress()
    slots = SlotMap(slot_targets)
    before = progress.keys
    for _ in range(MAX_PASSES):
        if _one_pass(source, slots, slots.targets, batch, parallel, timeout_ms, progress, on_batch, password,
                     still_allowed) == 0:
            return progress.keys - before
    raise MoveError(f"keys of the moving slots keep appearing on {source} after {MAX_PASSES} passes; is a "
                    "proxy still writing there without the migrating mark? The reshard stopped (resumable)")


def delete_slots(address: str, slots: set[int], batch: int = 500, password: str | None = None) -> int:
    """UNLINK every key of ``slots`` on ``address`` (``--no-data``: the keys stay behind on the old owner)."""
    index = bytearray(SLOT_COUNT)
    for s in slots:
        index[s] = 1
    conn = connect(address, password=password)
    deleted = 0
    try:
        for keys in scan_keys(conn):
            doomed = [k for k in keys if index[key_slot(k)]]
            for i in range(0, len(doomed), batch):
                deleted += int(conn.unlink(*doomed[i: i + batch]))
    except redis.RedisError as exc:
        reason = failure(address, "SCAN", exc, password) if isinstance(exc, redis.AuthenticationError) \
            else f"{exc or type(exc).__name__}"
        raise NodeError(f"deleting the keys of moved slots on {address} failed ({reason})") from None
    finally:
        conn.close()
    return deleted


__all__ = ["MoveError", "Progress", "connect", "scan_keys", "migrate", "migrate_args", "move_slots", "delete_slots"]
