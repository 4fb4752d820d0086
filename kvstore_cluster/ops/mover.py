"""The key mover: SCAN a source master, MIGRATE the keys of given slots to their targets in batches.

One scanner per source feeds batches of keys to ``parallel`` MIGRATE workers (each on its own
connection), so the next SCAN runs while earlier batches move. MIGRATE is never given REPLACE:
a key that already exists on the target (BUSYKEY) stops the move and is reported, nothing is
overwritten.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from kvstore_cluster.node import CommandRefused, Node, NodeError
from kvstore_cluster.ops.errors import MoveError
from kvstore_cluster.slots import SLOT_COUNT, key_slot

SCAN_COUNT = 1000
MIGRATE_TIMEOUT_MS = 10_000
MAX_PASSES = 20  # a source that keeps gaining keys of moving slots means a proxy ignores the mark
SCAN_TIMEOUT = 15.0
RESUME_HINT = "run 'kvstore-admin reshard --resume'"


@dataclass
class Progress:
    """What the movers have moved so far, for the progress bar."""

    keys: int = 0


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


async def _busy_keys(source: Node, target: str, keys: list[bytes], password: str | None) -> list[bytes]:
    """Keys of a failed MIGRATE that are on both nodes (the ones MIGRATE moved are gone from the source)."""
    try:
        async with Node(target, 5.0, password) as node:
            on_target = await node.exist(keys)
        on_source = await source.exist(keys)
    except NodeError:
        return []
    return [k for k, t, s in zip(keys, on_target, on_source, strict=True) if t and s]


async def migrate(node: Node, target: str, keys: list[bytes], timeout_ms: int, password: str | None = None) -> None:
    """MIGRATE ``keys`` from ``node`` to ``target``; NOKEY (already gone) is fine; any error raises MoveError."""
    source = node.address
    try:
        await node.migrate(target, keys, timeout_ms, password)
    except CommandRefused as exc:
        if "BUSYKEY" in exc.reply:
            busy = await _busy_keys(node, target, keys, password)
            shown = ", ".join(repr(k.decode(errors="backslashreplace")) for k in busy[:5]) or "(unknown)"
            more = f" and {len(busy) - 5} more" if len(busy) > 5 else ""
            raise MoveError(
                f"MIGRATE {source} -> {target} refused: the target already holds key(s) {shown}{more} (BUSYKEY). "
                f"Nothing was overwritten. Decide which copy is right, delete the other, then {RESUME_HINT} "
                "(or --abort)"
            ) from None
        raise MoveError(f"MIGRATE {source} -> {target} failed: {exc.reply}. The reshard stopped; fix the cause and "
                        f"{RESUME_HINT} (an IOERR/timeout may leave a key on both nodes, which the next attempt "
                        "reports as BUSYKEY)") from None
    except NodeError as exc:
        raise MoveError(f"{exc}; the reshard stopped, {RESUME_HINT} once the nodes answer") from None


def _unique(keys: list[bytes]) -> list[bytes]:
    # SCAN may return a key twice (while the source's table rehashes); a key given twice to
    # one MIGRATE is restored twice on the target, and the second RESTORE fails with BUSYKEY.
    return list(dict.fromkeys(keys))


async def _one_pass(source: str, slots: SlotMap, batch: int, parallel: int, timeout_ms: int, progress: Progress,
                    on_batch: Callable[[], None] | None, password: str | None,
                    still_allowed: Callable[[], None] | None) -> int:
    """One SCAN over ``source`` moving what it finds; returns how many keys of moving slots it saw."""
    work: asyncio.Queue[tuple[int, list[bytes]] | None] = asyncio.Queue(maxsize=parallel * 4)
    failed: list[BaseException] = []

    async def worker() -> None:
        async with Node(source, SCAN_TIMEOUT, password) as node:
            while True:
                item = await work.get()
                if item is None:
                    return
                if failed:
                    continue  # drain the queue so the scanner never blocks
                t, keys = item
                try:
                    if still_allowed is not None:
                        still_allowed()  # raises once these slots may no longer move
                    await migrate(node, slots.targets[t - 1], keys, timeout_ms, password)
                except Exception as exc:  # noqa: BLE001 - reported by the caller
                    failed.append(exc)
                    continue
                progress.keys += len(keys)
                if on_batch is not None:
                    on_batch()

    workers = [asyncio.create_task(worker()) for _ in range(parallel)]
    seen = 0
    try:
        async with Node(source, SCAN_TIMEOUT, password) as scanner:
            pending: dict[int, list[bytes]] = {}
            async for keys in scanner.scan(SCAN_COUNT):
                if failed:
                    break
                for t, ks in slots.split(keys).items():
                    seen += len(ks)
                    buf = pending.setdefault(t, [])
                    buf.extend(ks)
                    while len(buf) >= batch:
                        await work.put((t, _unique(buf[:batch])))
                        del buf[:batch]
            for t, buf in pending.items():
                if buf and not failed:
                    await work.put((t, _unique(buf)))
    except NodeError as exc:
        raise NodeError(f"{exc}; the reshard stopped, {RESUME_HINT} once it answers") from None
    finally:
        for _ in workers:
            await work.put(None)
        await asyncio.gather(*workers, return_exceptions=True)
    if failed:
        raise failed[0]
    return seen


async def move_slots(source: str, slot_targets: dict[int, str], *, batch: int = 100, parallel: int = 4,
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
        if await _one_pass(source, slots, batch, parallel, timeout_ms, progress, on_batch, password,
                           still_allowed) == 0:
            return progress.keys - before
    raise MoveError(f"keys of the moving slots keep appearing on {source} after {MAX_PASSES} passes; is a "
                    "proxy still writing there without the migrating mark? The reshard stopped (resumable)")


async def delete_slots(address: str, slots: set[int], batch: int = 500, password: str | None = None) -> int:
    """UNLINK every key of ``slots`` on ``address`` (``--no-data``: the keys stay behind on the old owner)."""
    index = bytearray(SLOT_COUNT)
    for s in slots:
        index[s] = 1
    deleted = 0
    try:
        async with Node(address, SCAN_TIMEOUT, password) as node:
            async for keys in node.scan(SCAN_COUNT):
                doomed = [k for k in keys if index[key_slot(k)]]
                for i in range(0, len(doomed), batch):
                    deleted += await node.unlink(doomed[i: i + batch])
    except NodeError as exc:
        raise NodeError(f"deleting the keys of moved slots failed: {exc}") from None
    return deleted
