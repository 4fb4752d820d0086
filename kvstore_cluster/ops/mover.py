"""The key mover: reads each source master once per reshard and moves the keys of each step's slots.

Per source (:class:`SourceMover`), at the first step it moves::

    new-key events (new_keys.py) ─► one SCAN pass ─┬─ keys of this step's slots ─► take workers
                                                   └─ keys of later steps' slots ─► kept, by slot
    each later step: tracker fence ─► kept keys + keys created since (tracker) of its slots ─► take workers

A SCAN pass returns every key present from its start to its end; a step's slots are released
(every proxy moves their keys on access, none writes them on the source) before its keys move,
so the kept keys plus the keys created since the pass began are all its keys. If the tracker
cannot vouch for that (its connection dropped, its flags were changed) or too many keys would be
kept, the step reads the source again instead.

Keys leave through the take script (``kvstore_cluster/keymove.py``) in batches of ``batch`` keys
and at most ``batch_bytes``, on ``parallel`` connections per source: it MIGRATEs them (never
REPLACE: a key already on the target, BUSYKEY, stops the move with the key named) and leaves big
or locked keys in place, which one task per source then moves in pieces (``big_keys.py``).

The pace (``pace.py``): full speed while no client uses the sources; while clients do (their
requests reaching a source, measured from its ``INFO stats`` less the movers' own traffic), at
most ``busy_rate`` keys/s in small takes and short SCAN calls, so that the servers stay the
clients' first. The sources are watched from the start of the run (``KeyMover.watch``): the
executor sizes the steps it marks by the verdict.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from kvstore_cluster.codec import parse_address
from kvstore_cluster.keymove import BIG_KEY_BYTES, LOCKED, TAKE, take_args
from kvstore_cluster.node import CommandRefused, Node, NodeError, parse_info
from kvstore_cluster.ops import big_keys
from kvstore_cluster.ops.big_keys import Stalls
from kvstore_cluster.ops.errors import MoveError
from kvstore_cluster.ops.new_keys import NewKeyTracker
from kvstore_cluster.ops.pace import BUSY_RATE, FIRST_SAMPLE_SECONDS, SAMPLE_SECONDS, Pace, Sample
from kvstore_cluster.slots import SLOT_COUNT, key_slot

log = structlog.get_logger("kvstore.ops.mover")

SCAN_COUNT = 2000
MIGRATE_TIMEOUT_MS = 10_000
SCAN_TIMEOUT = 15.0
MOVER_NICE = 10  # the movers' thread's nice value (see KeyMover._run)
KEEP_MAX = 4_000_000  # keys kept for later steps per source; beyond, each step reads the source again
RESUME_HINT = "run 'kvstore-admin reshard --resume'"
WATCH_WAIT = 0.25  # seconds a run waits at most for the pace's first verdict (two readings, 0.05 s apart)
T = TypeVar("T")


@dataclass
class Progress:
    """What the movers have done so far (the progress bar, status, the final summary)."""

    keys: int = 0
    bytes: int = 0
    big_keys: int = 0
    scans: int = 0  # SCAN passes over a source
    paced_keys: int = 0  # keys moved while clients used the sources (at the busy rate)
    stalls: Stalls = field(default_factory=Stalls)


class SlotMap:
    """slot -> target index (0 = not moving now), a bytearray so the per-key test is one index."""

    def __init__(self, slot_targets: dict[int, str]):
        self.targets = sorted(set(slot_targets.values()))
        self.index = bytearray(SLOT_COUNT)
        for s, t in slot_targets.items():
            self.index[s] = self.targets.index(t) + 1


def _unique(keys: list[bytes]) -> list[bytes]:
    # SCAN may return a key twice (while the source's table rehashes); a key given twice to
    # one MIGRATE is restored twice on the target, and the second RESTORE fails with BUSYKEY.
    return list(dict.fromkeys(keys))


def _move_error(source: str, target: str, exc: NodeError, busy: list[bytes]) -> MoveError:
    if isinstance(exc, CommandRefused):
        if "BUSYKEY" in exc.reply:
            shown = ", ".join(repr(k.decode(errors="backslashreplace")) for k in busy[:5]) or "(unknown)"
            more = f" and {len(busy) - 5} more" if len(busy) > 5 else ""
            return MoveError(
                f"MIGRATE {source} -> {target} refused: the target already holds key(s) {shown}{more} (BUSYKEY). "
                f"Nothing was overwritten. Decide which copy is right, delete the other, then {RESUME_HINT} "
                "(or --abort)")
        return MoveError(f"MIGRATE {source} -> {target} failed: {exc.reply}. The reshard stopped; fix the cause and "
                         f"{RESUME_HINT} (an IOERR/timeout may leave a key on both nodes, which the next attempt "
                         "reports as BUSYKEY)")
    return MoveError(f"{exc}; the reshard stopped, {RESUME_HINT} once the nodes answer")


@dataclass(frozen=True)
class Tuning:
    batch: int = 500  # keys per take (MIGRATE)
    batch_bytes: int = 512 << 10  # and at most this many bytes (MEMORY USAGE) per take
    parallel: int = 2  # take connections per source
    busy_rate: int = BUSY_RATE  # keys/s at most while clients use the sources (0: no limit)
    big_key_bytes: int = BIG_KEY_BYTES
    timeout_ms: int = MIGRATE_TIMEOUT_MS
    password: str | None = field(default=None, repr=False)
    # The cluster's slot function with its key rules (ClusterStore.read_keyrules): which slot a key is in.
    key_slot: Callable[[bytes], int] = field(default=key_slot, repr=False)


class SourceMover:
    """One source master's share of a reshard: its tracker, its kept keys, its take workers."""

    def __init__(self, address: str, later: set[int], tuning: Tuning, progress: Progress, pace: Pace | None = None):
        self.address = address
        self.tuning = tuning
        self.progress = progress
        self.pace = pace or Pace(tuning.busy_rate)
        self.nodes: list[Node] = []  # every connection of ours to the source (its traffic is not the clients')
        self.watcher: asyncio.Task[None] | None = None
        self.later = bytearray(SLOT_COUNT)  # slots of later steps: keep their keys
        for s in later:
            self.later[s] = 1
        self.kept: dict[int, list[bytes]] = {}
        self.kept_count = 0
        self.created: dict[int, set[bytes]] = {}
        self.tracker: NewKeyTracker | None = None
        self.read = False  # a pass has read the source for every slot still to move
        self.keeping = True  # False once KEEP_MAX was exceeded: every step reads the source itself

    def _on_created(self, keys: list[bytes]) -> None:
        later, created, slot = self.later, self.created, self.tuning.key_slot
        for k in keys:
            s = slot(k)
            if later[s]:
                created.setdefault(s, set()).add(k)

    def node(self) -> Node:
        """A connection to the source, its traffic counted as ours."""
        node = Node(self.address, SCAN_TIMEOUT, self.tuning.password)
        self.nodes.append(node)
        return node

    async def close_tracker(self) -> None:
        tracker, self.tracker = self.tracker, None  # the watcher and a pass may both close it
        if tracker is not None:
            await tracker.close()

    async def close(self) -> None:
        await self.close_tracker()
        if self.watcher is not None:
            self.watcher.cancel()
            await asyncio.gather(self.watcher, return_exceptions=True)
            self.watcher = None

    async def _watch(self) -> None:
        """Tell the pace, every :data:`SAMPLE_SECONDS`, how much traffic reached the source (and how much was ours)."""
        pause = FIRST_SAMPLE_SECONDS  # clients already there are seen before the first takes are far along
        async with self.node() as node:
            while True:
                answered = sum(n.answered for n in self.nodes)
                try:
                    info = await node.call("INFO", "stats")
                    received = int(parse_info(info.decode(errors="replace"))["total_net_input_bytes"])
                except (NodeError, ValueError, KeyError, AttributeError):
                    pass  # a node that does not answer is the takes' problem, not the pace's
                else:
                    self.pace.observe(self.address, Sample(self.pace.clock(), received, answered,
                                                           sum(n.sent for n in self.nodes)))
                await asyncio.sleep(pause)
                pause = SAMPLE_SECONDS

    def watch(self) -> None:
        """Start telling the pace how busy the source is (once)."""
        if self.watcher is None and self.pace.busy_rate > 0:
            self.watcher = asyncio.create_task(self._watch())

    async def move(self, slot_targets: dict[int, str], still_allowed: Callable[[], None]) -> int:
        """Move every key of ``slot_targets``'s slots to its target; returns the number moved."""
        slots = SlotMap(slot_targets)
        self.watch()
        work = _Work(self, slots, still_allowed)
        async with work:
            await work.resume_locked(slot_targets)
            if self.read and self.tracker is not None and self.tracker.lost is None:
                try:
                    await self.tracker.fence()  # the step's slots are still "later" until its writes are in
                except NodeError:
                    pass
            for s in slot_targets:
                self.later[s] = 0
            if self.read and self.tracker is not None and self.tracker.lost is None:
                pending: dict[int, list[bytes]] = {}
                for s in slot_targets:
                    keys = self.kept.pop(s, [])
                    self.kept_count -= len(keys)
                    keys.extend(self.created.pop(s, ()))
                    buf = pending.setdefault(slots.index[s], [])
                    buf.extend(keys)
                    if len(buf) >= self.tuning.batch:
                        await work.add(slots.index[s], buf)
                        pending[slots.index[s]] = []
                for t, buf in pending.items():
                    if buf:
                        await work.add(t, buf)
            else:
                await self._pass(work)
        return work.moved

    async def _pass(self, work: _Work) -> None:
        """One SCAN over the source: this step's keys to the workers, later steps' kept (and tracked from now on)."""
        await self.close_tracker()
        self.kept.clear()
        self.created.clear()
        self.kept_count = 0
        keep = self.keeping and any(self.later)
        if keep:
            self.tracker = NewKeyTracker(self.address, self._on_created, self.tuning.password)
            try:
                await self.tracker.start()
            except NodeError as exc:
                log.warning("new_key_tracking_unavailable", node=self.address, error=str(exc))
                await self.close_tracker()
                keep = False
        index, later, kept, key_slot = work.slots.index, self.later, self.kept, self.tuning.key_slot
        self.progress.scans += 1
        try:
            async with self.node() as scanner:
                pending: dict[int, list[bytes]] = {}
                async for keys in scanner.scan(lambda: self.pace.scan_count(SCAN_COUNT)):
                    work.check()
                    await self.pace.scan_pause()
                    for k in keys:
                        s = key_slot(k)
                        t = index[s]
                        if t:
                            pending.setdefault(t, []).append(k)
                        elif keep and later[s]:
                            kept.setdefault(s, []).append(k)
                            self.kept_count += 1
                    for t, buf in pending.items():
                        if len(buf) >= self.tuning.batch:
                            await work.add(t, buf)
                            pending[t] = []
                    if keep and self.kept_count > KEEP_MAX:
                        log.warning("reshard_keys_not_kept", node=self.address, kept=self.kept_count,
                                    consequence="each later step reads the source again")
                        keep = self.keeping = False
                        kept.clear()
                        self.kept_count = 0
                        await self.close_tracker()
                for t, buf in pending.items():
                    if buf:
                        await work.add(t, buf)
        except NodeError as exc:
            raise NodeError(f"{exc}; the reshard stopped, {RESUME_HINT} once it answers") from None
        self.read = keep


class _Work:
    """The take workers and the big-key task of one source for one step."""

    def __init__(self, owner: SourceMover, slots: SlotMap, still_allowed: Callable[[], None]):
        self.owner = owner
        self.slots = slots
        self.tuning = owner.tuning
        self.progress = owner.progress
        self.still_allowed = still_allowed
        self.queue: asyncio.Queue[tuple[int, list[bytes]] | None] = asyncio.Queue(maxsize=owner.tuning.parallel * 4)
        self.big: asyncio.Queue[tuple[int, bytes, bool] | None] = asyncio.Queue()
        self.big_seen: set[bytes] = set()
        self.failed: list[BaseException] = []
        self.moved = 0
        self.tasks: list[asyncio.Task[None]] = []

    def check(self) -> None:
        if self.failed:
            raise self.failed[0]
        self.still_allowed()

    async def __aenter__(self) -> _Work:
        self.tasks = [asyncio.create_task(self._taker()) for _ in range(self.tuning.parallel)]
        self.big_task = asyncio.create_task(self._big_mover())
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        for _ in self.tasks:
            await self.queue.put(None)
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.big.put(None)
        await asyncio.gather(self.big_task, return_exceptions=True)
        if exc is None and self.failed:
            raise self.failed[0]

    async def add(self, target: int, keys: list[bytes]) -> None:
        self.check()
        keys = _unique(keys)
        for i in range(0, len(keys), self.tuning.batch):
            await self.queue.put((target, keys[i: i + self.tuning.batch]))

    async def resume_locked(self, slot_targets: dict[int, str]) -> None:
        """Big keys a mover that died left locked: finish them first (their requests are held meanwhile)."""
        async with self.owner.node() as node:
            locked = await node.call("EVAL", LOCKED, 0, what="EVAL locked")
        for k in locked or ():
            t = self.slots.index[self.tuning.key_slot(k)]
            if t:
                self.big_seen.add(k)
                await self.big.put((t, k, True))
            else:
                log.warning("locked_key_outside_step", node=self.owner.address, key=k.decode(errors="backslashreplace"))

    async def _taker(self) -> None:
        tuning, source, pace = self.tuning, self.owner.address, self.owner.pace
        try:
            async with self.owner.node() as node:
                await node.call("SCRIPT", "LOAD", TAKE, what="SCRIPT LOAD")
                while (item := await self.queue.get()) is not None:
                    if self.failed:
                        continue  # drain the queue so producers never block
                    t, keys = item
                    target = self.slots.targets[t - 1]
                    host, port = parse_address(target)
                    try:
                        self.check()
                        while keys:
                            n = pace.batch(len(keys))
                            await pace.admit(n)
                            self.check()
                            began = time.monotonic()
                            reply = await node.call("EVALSHA", *take_args(
                                keys[:n], host, port, tuning.timeout_ms, mode="mover", big_bytes=tuning.big_key_bytes,
                                budget=tuning.batch_bytes, password=tuning.password),
                                timeout=tuning.timeout_ms / 1000 + node.timeout, what=f"MIGRATE to {target}")
                            took = time.monotonic() - began
                            if took > self.progress.stalls.longest:
                                self.progress.stalls.longest = took
                            moved, size, nleft = int(reply[0]), int(reply[1]), int(reply[2])
                            self.moved += moved
                            self.progress.keys += moved
                            if pace.busy:
                                self.progress.paced_keys += moved
                            self.progress.bytes += size
                            for k in reply[3: 3 + nleft]:
                                if k not in self.big_seen:
                                    self.big_seen.add(k)
                                    await self.big.put((t, k, False))
                            keys = [*reply[3 + nleft:], *keys[n:]]
                    except NodeError as exc:
                        self.failed.append(_move_error(source, target, exc, await _busy_keys(node, target, keys,
                                                                                             tuning.password)))
                    except Exception as exc:  # noqa: BLE001 - reported by the caller
                        self.failed.append(exc)
        except NodeError as exc:
            self.failed.append(MoveError(f"{exc}; the reshard stopped, {RESUME_HINT} once the nodes answer"))

    async def _big_mover(self) -> None:
        targets: dict[str, Node] = {}
        try:
            async with self.owner.node() as source:
                while (item := await self.big.get()) is not None:
                    if self.failed:
                        continue
                    t, key, resuming = item
                    address = self.slots.targets[t - 1]
                    target = targets.get(address)
                    if target is None:
                        target = targets[address] = Node(address, SCAN_TIMEOUT, self.tuning.password)
                    try:
                        self.check()
                        n = await big_keys.move(source, target, key, self.progress.stalls, resuming)
                    except NodeError as exc:
                        self.failed.append(MoveError(f"moving the big key {key!r} failed: {exc}; {RESUME_HINT}"))
                    except Exception as exc:  # noqa: BLE001 - reported by the caller
                        self.failed.append(exc)
                    else:
                        self.moved += n
                        self.progress.keys += n
                        self.progress.big_keys += n
        finally:
            for node in targets.values():
                await node.close()


async def _busy_keys(source: Node, target: str, keys: list[bytes], password: str | None) -> list[bytes]:
    """Keys of a failed MIGRATE that are on both nodes (the ones MIGRATE moved are gone from the source)."""
    try:
        async with Node(target, 5.0, password) as node:
            on_target = await node.exist(keys)
        on_source = await source.exist(keys)
    except NodeError:
        return []
    return [k for k, t, s in zip(keys, on_target, on_source, strict=True) if t and s]


class KeyMover:
    """The movers of one executor run, on an event loop of their own (a thread), kept across steps.

    The executor's ZooKeeper calls block; the trackers must keep reading meanwhile.
    """

    def __init__(self, tuning: Tuning, later: dict[str, set[int]]):
        self.tuning = tuning
        self.later = later  # source group -> slots of the steps after the first one moved
        self.progress = Progress()
        self.pace = Pace(tuning.busy_rate)  # shared: busy_rate is for the whole reshard
        self.sources: dict[str, SourceMover] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="key-mover", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # The movers yield the CPU to the proxies and their clients when both want it (and lose
        # nothing on an idle machine); the executor's thread keeps its priority, so the barriers,
        # during which proxies hold requests, are not delayed.
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + MOVER_NICE)
        except (OSError, AttributeError):
            pass
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Any:
        """Run ``coro`` on the movers' loop; a ``concurrent.futures.Future`` of its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def _source(self, gid: str, address: str) -> SourceMover:
        mover = self.sources.get(gid)
        if mover is None or mover.address != address:
            if mover is not None:
                await mover.close()
            mover = self.sources[gid] = SourceMover(address, self.later.get(gid, set()), self.tuning,
                                                    self.progress, self.pace)
        return mover

    async def watch(self, masters: dict[str, str], wait: float = WATCH_WAIT) -> bool:
        """Watch these sources (group -> master) from now on; return once the pace knows if clients use them.

        At most ``wait`` seconds (then the pace says idle until it knows better); returns the verdict.
        """
        for gid, address in masters.items():
            (await self._source(gid, address)).watch()
        deadline = time.monotonic() + wait
        while self.pace.busy_rate > 0 and not self.pace.judged.issuperset(masters.values()):
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.005)
        return self.pace.busy

    async def move(self, by_source: dict[str, tuple[str, dict[int, str]]], still_allowed: Callable[[], None]) -> int:
        """``by_source``: group -> (its master's address, slot -> target address). All sources at once."""
        movers = []
        for gid, (address, slot_targets) in by_source.items():
            mover = await self._source(gid, address)
            movers.append(mover.move(slot_targets, still_allowed))
        results = await asyncio.gather(*movers, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return sum(r for r in results if isinstance(r, int))

    def close(self) -> None:
        async def close_all() -> None:
            for mover in self.sources.values():
                await mover.close()

        try:
            self.submit(close_all()).result(10)
        except Exception as exc:  # noqa: BLE001 - closing must not mask the real outcome
            log.warning("mover_close_failed", error=str(exc))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def move_listed(address: str, target_of: Callable[[bytes], str | None], batches: AsyncIterator[list[bytes]],
                      tuning: Tuning, progress: Progress, still_allowed: Callable[[], None]) -> int:
    """Move keys of the source master at ``address`` to ``target_of(key)`` (None: the key stays).

    The keys it left locked first (a mover that died part-way through a big key), then every key
    ``batches`` yields: the same takes and big keys in pieces as a reshard's, for callers that
    find the keys themselves (a key rule change). Returns the number of keys moved.
    """
    slots = SlotMap({})
    index: dict[str, int] = {}

    def target(key: bytes) -> int:
        address = target_of(key)
        if address is None:
            return 0
        found = index.get(address)
        if found is None:
            slots.targets.append(address)
            found = index[address] = len(slots.targets)
        return found

    work = _Work(SourceMover(address, set(), tuning, progress), slots, still_allowed)
    async with work:
        async with Node(address, SCAN_TIMEOUT, tuning.password) as node:
            locked = await node.call("EVAL", LOCKED, 0, what="EVAL locked")
        for k in locked or ():
            t = target(k)
            if t:
                work.big_seen.add(k)
                await work.big.put((t, k, True))
        async for keys in batches:
            pending: dict[int, list[bytes]] = {}
            for k in keys:
                t = target(k)
                if t:
                    pending.setdefault(t, []).append(k)
            for t, buf in pending.items():
                await work.add(t, buf)
    return work.moved


async def delete_slots(address: str, slots: set[int], batch: int = 500, password: str | None = None,
                       key_slot: Callable[[bytes], int] = key_slot) -> int:
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


def estimate(dbsize: int, moving: int, owned: int) -> int:
    """Keys a source will give up: its key count times the share of its slots that move."""
    return dbsize * moving // owned if owned else 0
