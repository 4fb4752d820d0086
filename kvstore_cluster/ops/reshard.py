"""The reshard executor: a resumable state machine in the ``reshard`` znode that moves slots and their keys.

It runs in ``kvstore-admin reshard/rebalance`` and, after an automatic cache rejoin, in the
sentinel leader (docs/design.md, "Resharding").

A plan is a list of steps, each a few slot ranges moving (source -> target). Per step::

    pending ─mark─► marked ─barrier─► moving ─move keys, commit─► committed ─barrier─► (next mark | done)

- **mark**: one transaction sets the step's slots migrating in ``slots`` *and* records
  ``phase=marked`` here, both version-checked.
- **barrier**: wait until every registered proxy reports (``slots_version`` in its
  ``proxies/<id>`` node) that it applied the version written; a proxy that does not within
  ``--timeout`` stops the reshard, named in the message, state kept.
- **moving** is recorded once every proxy has the mark. This is the proxies' signal (they
  watch this znode) that they may start moving keys of the marked slots to the target: a
  proxy that moved a key while another proxy, not yet aware of the mark, still wrote to the
  source would leave the key in two places. So a proxy holds (answers TRYAGAIN to) commands on
  slots it sees migrating until this znode says ``moving`` or ``committed`` for exactly the
  migrations of the table it applied (the table and this znode change in one transaction but
  reach a proxy as two watch events). An executor that dies in ``marked`` leaves those slots
  answering TRYAGAIN until ``--resume`` or ``--abort`` gets past the barrier.
- **move**: SCAN each source master and MIGRATE the keys of the step's slots (``mover``);
  idempotent, so a resumed executor simply runs it again.
- **commit**: one transaction sets owner=target, clears the step's marks and records
  ``phase=committed``.

Every side effect happens after the phase that allows it is saved, and every phase change is a
transaction together with the ``slots`` change it stands for, so an executor killed anywhere is
resumed by the next one from the znode alone. Each transaction also carries the executor's
fence: a sentinel that lost its leadership commits nothing more.

Abort: slots of steps not yet marked stay with their owner. A step that is already marked is
*finished forward*, never rolled back: once the mark is applied, proxies move keys of those
slots to the target on every access, so keys may sit on both sides of the step; moving them
back would need every proxy to stop using the target first (another mark in the other
direction, with a window where two proxies move one key in opposite directions). Finishing
forward keeps the invariant that a slot's owner holds all its keys.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from kvstore_cluster import paths
from kvstore_cluster.model import Migration, SlotTable
from kvstore_cluster.node import Node
from kvstore_cluster.ops import mover
from kvstore_cluster.ops.barrier import BarrierTimeout, wait_for_proxies
from kvstore_cluster.ops.context import crash_point
from kvstore_cluster.ops.errors import OpError, ReshardInProgress, ReshardStopped
from kvstore_cluster.ops.fence import NO_FENCE, Fence
from kvstore_cluster.ops.rule_change import no_rule_change
from kvstore_cluster.ops.slot_moves import cut_step, split_steps
from kvstore_cluster.proxy_registration import MIGRATION, PROTOCOLS, ProxyRegistration
from kvstore_cluster.reshard_state import ReshardProgress, ReshardState
from kvstore_cluster.slots import format_slot_ranges, merge_ranges
from kvstore_cluster.store import Check, ClusterStore, CorruptData, Create, Delete, Records, Set, Versioned

log = structlog.get_logger("kvstore.ops.reshard")

DEFAULT_SLOTS_PER_STEP = 4096  # without clients: fewer barriers (measured: docs/design.md, "Resharding")
# While clients use the sources: the step size measured to keep them served (ops/pace.py).
BUSY_SLOTS_PER_STEP = 1024
DEFAULTS = mover.Tuning()  # batch sizes and parallelism (tuned by measurement: docs/design.md)

def in_progress_error(state: ReshardState) -> ReshardInProgress:
    return ReshardInProgress(f"a reshard is already in progress ({state.request_text}, {state.describe()}); "
                             "use --resume or --abort")


# --- options, progress, result ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    batch: int = mover.Tuning.batch  # keys per take (MIGRATE)
    parallel: int = mover.Tuning.parallel  # take connections per source
    timeout: float = 30.0  # seconds to wait for the proxies at each barrier
    slots_per_step: int = DEFAULT_SLOTS_PER_STEP
    busy_slots_per_step: int = BUSY_SLOTS_PER_STEP
    migrate_timeout_ms: int = mover.MIGRATE_TIMEOUT_MS
    batch_bytes: int = mover.Tuning.batch_bytes
    big_key_bytes: int = mover.Tuning.big_key_bytes
    busy_rate: int = mover.Tuning.busy_rate  # keys/s at most while clients use the sources (0: no limit)
    password: str | None = field(default=None, repr=False)  # the Redis nodes' (--redis-password)

    def tuning(self) -> mover.Tuning:
        return mover.Tuning(batch=self.batch, batch_bytes=self.batch_bytes, parallel=self.parallel,
                            big_key_bytes=self.big_key_bytes, busy_rate=self.busy_rate,
                            timeout_ms=self.migrate_timeout_ms,
                            password=self.password)


class Reporter:
    """What the executor tells the user while it works; the CLI's progress bar overrides it."""

    def start(self, total_slots: int, slots_done: int, keys: int) -> None: ...

    def update(self, slots_done: int, progress: ReshardProgress) -> None: ...

    def finish(self) -> None: ...


@dataclass
class Result:
    slots: int = 0  # slots moved by this run
    keys: int = 0  # keys moved by this run
    bytes: int = 0  # their size (MEMORY USAGE of each, as the take script saw it)
    big_keys: int = 0  # of them moved in pieces
    steps: int = 0
    scans: int = 0  # SCAN passes over a source
    paced_keys: int = 0  # keys moved while clients used the sources (at --busy-rate)
    move_seconds: float = 0.0  # time spent moving keys only
    seconds: float = 0.0
    longest_stall: float = 0.0  # the longest single command the mover ran on a server, seconds
    aborted: bool = False
    finished: bool = False
    deleted_keys: int = 0  # --no-data: keys dropped from the old owners

    def to_json(self) -> dict[str, Any]:
        return {
            "slots_moved": self.slots, "keys_moved": self.keys, "bytes_moved": self.bytes,
            "big_keys_moved": self.big_keys, "keys_moved_paced": self.paced_keys, "steps": self.steps,
            "scan_passes": self.scans,
            "seconds": round(self.seconds, 3), "move_seconds": round(self.move_seconds, 3),
            "keys_per_second": round(self.keys / self.seconds) if self.seconds > 0 else None,
            "longest_stall_ms": round(self.longest_stall * 1000, 1),
            "aborted": self.aborted, "finished": self.finished, "keys_deleted": self.deleted_keys,
        }


# --- starting ----------------------------------------------------------------------------------------


def start(store: ClusterStore, moves: list[Migration], request: dict[str, Any], *, no_data: bool = False,
          slots_per_step: int = DEFAULT_SLOTS_PER_STEP, fence: Fence = NO_FENCE) -> Versioned[ReshardState]:
    """Record a new reshard (fails if one is in progress); nothing is marked yet."""
    existing = store.read_reshard()
    if existing is not None:
        raise in_progress_error(existing.value)
    slots = store.read_slots()
    if slots.value.migrating:
        leftover = format_slot_ranges(merge_ranges([(m.lo, m.hi) for m in slots.value.migrating]))
        raise OpError(f"slots {leftover} are marked migrating but no reshard is recorded; "
                      "refusing to start another one over them")
    state = ReshardState(request=request, steps=tuple(tuple(s) for s in split_steps(moves, slots_per_step)),
                         no_data=no_data)
    path = paths.reshard(store.cluster)
    fence.check()
    try:
        # Checking the slots version: the plan was computed from this very table.
        store.commit([Create(path, state.encode()), Check(paths.slots(store.cluster), slots.version),
                      *no_rule_change(store), *fence.zk_checks()])
    except Exception:
        again = store.read_reshard()
        if again is not None:
            raise in_progress_error(again.value) from None
        raise
    log.info("reshard_started", steps=len(state.steps), slots=state.total_slots, no_data=no_data)
    return Versioned(state, 0)


def request_abort(store: ClusterStore, fence: Fence = NO_FENCE) -> Versioned[ReshardState] | None:
    """Flag the reshard in progress as aborting (then ``run`` finishes the marked step and stops)."""
    current = store.read_reshard()
    if current is None or current.value.aborting:
        return current
    state = current.value.at(aborting=True)
    fence.check()
    store.commit([Set(paths.reshard(store.cluster), state.encode(), current.version), *fence.zk_checks()])
    log.info("reshard_abort_requested", at=state.describe())
    return Versioned(state, current.version + 1)


# --- the state machine -------------------------------------------------------------------------------


class Executor:
    def __init__(self, store: ClusterStore, options: Options, fence: Fence = NO_FENCE,
                 reporter: Reporter | None = None):
        self.store = store
        self.options = options
        self.fence = fence
        self.reporter = reporter or Reporter()
        self.path = paths.reshard(store.cluster)
        self.slots_path = paths.slots(store.cluster)
        self.result = Result()
        self.mover: mover.KeyMover | None = None
        self.began = time.monotonic()
        self.keys_total = 0  # estimate of the keys this run moves (refined as sources are read)
        self.published = 0.0

    def run(self) -> Result:
        """Drive the recorded reshard to its end (or to the end of its marked step if aborting)."""
        self.began = time.monotonic()
        current = self.store.read_reshard()
        if current is None:
            self.result.finished = True
            return self.result
        self.reporter.start(current.value.total_slots, current.value.slots_done, current.value.keys_moved)
        try:
            while current is not None:
                self.fence.check()
                current = self._advance(current)
        finally:
            self.result.seconds = time.monotonic() - self.began
            if self.mover is not None:
                self._take_progress()
                self.mover.close()
                self.mover = None
            try:
                self.store.clear_reshard_progress()
            except Exception as exc:  # noqa: BLE001 - ephemeral: it goes with our session anyway
                log.warning("reshard_progress_not_cleared", error=str(exc))
            self.reporter.finish()
        self.result.finished = True
        return self.result

    def _commit_ops(self, ops: list[Set | Delete]) -> None:
        self.fence.check()
        self.store.commit([*ops, *self.fence.zk_checks()])

    def _advance(self, cur: Versioned[ReshardState]) -> Versioned[ReshardState] | None:
        state = cur.value
        if state.phase == "pending":
            if state.aborting:
                self._finish(cur)
                return None
            return self._mark(cur, state.step)
        if state.phase == "marked":
            self._barrier(state, state.version)
            cur = self._set_phase(cur, "moving")
            crash_point("acked")
            return cur
        if state.phase == "moving":
            # The barrier again: cheap, and a proxy that registered while no admin ran must have the mark too.
            self._barrier(state, state.version)
            moved = self._move(state)
            crash_point("moved")
            return self._commit(cur, moved)
        # committed: a --no-data step, or the last one
        self._barrier(state, state.version)
        if state.no_data:
            self._drop_old_keys(state)
        if state.aborting or state.step == len(state.steps) - 1:
            self._finish(cur)
            return None
        return self._mark(cur, state.step + 1)

    # each transition --------------------------------------------------------------------------------

    def _check_groups(self, moves: tuple[Migration, ...]) -> dict[str, str]:
        """Masters of the groups involved (each must exist and be in state ok)."""
        groups = self.store.read_groups().value
        out = {}
        for gid in sorted({g for m in moves for g in (m.source, m.target)}):
            g = groups.get(gid)
            if g is None:
                raise ReshardStopped(f"group {gid} of the reshard no longer exists; run 'kvstore-admin reshard "
                                     "--abort' (or add it back)")
            if g.state != "ok":
                raise ReshardStopped(f"group {gid} is {g.state}; the reshard stopped, resume it with "
                                     "'kvstore-admin reshard --resume' once the group is ok")
            out[gid] = g.master
        return out

    def _marked(self, state: ReshardState, table: SlotTable, step: int) -> SlotTable:
        """``table`` with ``step``'s migrations marked, once checked that they still make sense."""
        moves = state.steps[step]
        self._check_groups(moves)
        self._check_proxies_migrate(self.store.proxies(), state)
        for m in moves:
            for s in range(m.lo, m.hi + 1):
                if table.owner(s) != m.source:
                    raise ReshardStopped(
                        f"slot {s} should move from {m.source} but is owned by {table.owner(s)}: the slot table "
                        "changed under the reshard (a failover in cache mode?); run 'kvstore-admin reshard "
                        "--abort' and plan again")
                if table.migration_of(s) is not None:
                    raise ReshardStopped(f"slot {s} is already marked migrating outside this reshard")
        if state.no_data:
            return _with_owners(table, moves)
        # A new SlotTable validates the marks now (source == owner) rather than a proxy rejecting them.
        return SlotTable(table.ranges, (*table.migrating, *moves))

    def _cut_if_busy(self, state: ReshardState, step: int) -> ReshardState:
        """While clients use the sources, ``step`` is cut to ``busy_slots_per_step`` slots before it is marked.

        Recorded with the mark (the steps are part of the record), so a resumed run goes on from there.
        """
        limit = self.options.busy_slots_per_step
        moves = state.steps[step]
        if self.mover is None or not self.mover.pace.busy or sum(m.size for m in moves) <= limit:
            return state
        head, rest = cut_step(moves, limit)
        log.info("reshard_step_cut", step=step + 1, slots=limit, rest=sum(m.size for m in rest),
                 reason="clients are using the sources")
        return state.at(steps=(*state.steps[:step], tuple(head), tuple(rest), *state.steps[step + 1:]))

    def _mark(self, cur: Versioned[ReshardState], step: int) -> Versioned[ReshardState]:
        if self.mover is None and not cur.value.no_data:
            self.mover = self._start_mover(cur.value.at(step=step))  # the sources watched: is the step to be cut?
        state = self._cut_if_busy(cur.value, step)
        slots = self.store.read_slots()
        new_table = self._marked(state, slots.value, step)
        phase = "committed" if state.no_data else "marked"
        state = state.at(step=step, phase=phase, version=slots.version + 1)
        self._commit_ops([
            Set(self.slots_path, new_table.encode(), slots.version),
            Set(self.path, state.encode(), cur.version),
        ])
        log.info("reshard_marked" if phase == "marked" else "reshard_reassigned", at=state.describe(),
                 slots_version=state.version)
        self._report(state)
        crash_point(phase)
        return Versioned(state, cur.version + 1)

    def _set_phase(self, cur: Versioned[ReshardState], phase: str) -> Versioned[ReshardState]:
        state = cur.value.at(phase=phase)
        self._commit_ops([Set(self.path, state.encode(), cur.version)])
        return Versioned(state, cur.version + 1)

    def _check_proxies_migrate(self, proxies: Records[ProxyRegistration], state: ReshardState) -> None:
        """Refuse marks while a registered proxy would not move keys of migrating slots.

        Such a proxy (an older version) keeps writing migrating slots on the source while keys
        move to the target: reads would miss and writes would split a key in two.
        """
        if state.no_data:
            return
        if proxies.malformed:
            pid, error = sorted(proxies.malformed.items())[0]
            raise ReshardStopped(
                f"the registration of proxy {pid} is unreadable ({error}); a proxy that cannot be checked may "
                "not be moving keys of migrating slots: fix or stop it, then run 'kvstore-admin reshard --resume' "
                f"(the reshard is at {state.describe()})")
        old = sorted(pid for pid, reg in proxies.items.items() if not reg.speaks(MIGRATION))
        if old:
            raise ReshardStopped(
                f"proxies {', '.join(old)} do not move keys of migrating slots (no '{MIGRATION}' protocol >= "
                f"{PROTOCOLS[MIGRATION]} in their registration); upgrade or stop them, then run "
                f"'kvstore-admin reshard --resume' (the reshard is at {state.describe()})")

    def _barrier(self, state: ReshardState, version: int) -> None:
        """Wait until every registered proxy has applied slots ``version`` (zero proxies: at once).

        A proxy registers a version only once every request it sent before applying it has been
        answered, so past the barrier no request of the old table is still on its way to a source.
        """
        def check(proxies: Records[ProxyRegistration]) -> None:
            if state.phase in ("marked", "moving"):
                self._check_proxies_migrate(proxies, state)

        try:
            wait_for_proxies(self.store, lambda reg: reg.slots_version, version, self.options.timeout, "slots",
                             self.fence, check)
        except BarrierTimeout as exc:
            raise ReshardStopped(
                f"{exc}. The reshard is stopped at {state.describe()} and is resumable: fix or stop those proxies "
                "(a stopped proxy's node goes away with its ZooKeeper session), then run "
                "'kvstore-admin reshard --resume'") from None

    def _check_marks(self, state: ReshardState) -> None:
        """Stop unless the slot table still marks every migration of this step (and we may still act).

        The sentinel drops the marks of a failed cache group's migrations (and the reshard znode);
        keys moved after that would land in a group that does not own their slot.
        """
        self.fence.check()
        table = self.store.read_slots().value
        for m in state.current:
            if m not in table.migrating:
                raise ReshardStopped(
                    f"slots {m.lo}-{m.hi} are no longer marked migrating {m.source}->{m.target} (a group "
                    "failed and its slots were reassigned); run 'kvstore-admin reshard --abort', then "
                    "rebalance again")

    def _start_mover(self, state: ReshardState) -> mover.KeyMover:
        """The movers of this run: each source is read once, for this step and every later one, and watched."""
        # This step's slots too: cut while clients are busy, its rest becomes a later step.
        later: dict[str, set[int]] = {}
        for step in state.steps[state.step:]:
            for m in step:
                later.setdefault(m.source, set()).update(range(m.lo, m.hi + 1))
        moving: dict[str, int] = {}
        for step in state.steps[state.step:]:
            for m in step:
                moving[m.source] = moving.get(m.source, 0) + m.size
        counts = self.store.read_slots().value.counts()
        masters = {g.id: g.master for g in self.store.read_groups().value}
        keymover = mover.KeyMover(self._tuning(), later)
        for gid, n in moving.items():
            try:
                size = keymover.submit(_dbsize(masters[gid], self.options.password)).result(10)
            except Exception:  # noqa: BLE001 - only the ETA suffers
                size = 0
            self.keys_total += mover.estimate(size, n, counts.get(gid, 0))
        try:
            keymover.submit(keymover.watch({g: masters[g] for g in moving if g in masters})).result(5)
        except Exception as exc:  # noqa: BLE001 - without a verdict the pace says idle until it knows better
            log.warning("reshard_pace_unknown", error=str(exc))
        return keymover

    def _tuning(self) -> mover.Tuning:
        """The mover's settings, with the slot function of the cluster's key rules."""
        return replace(self.options.tuning(), key_slot=self.store.read_keyrules().value.slotter().key_slot)

    def _move(self, state: ReshardState) -> int:
        self._check_marks(state)
        masters = self._check_groups(state.current)
        if self.mover is None:
            self.mover = self._start_mover(state)
        by_source: dict[str, tuple[str, dict[int, str]]] = {}
        for m in state.current:
            _, targets = by_source.setdefault(m.source, (masters[m.source], {}))
            for s in range(m.lo, m.hi + 1):
                targets[s] = masters[m.target]
        began = time.monotonic()
        before = self.mover.progress.keys
        dropped: list[BaseException] = []
        first_batch = [False]

        def still_allowed() -> None:
            if dropped:
                raise dropped[0]
            if not first_batch[0] and self.mover is not None and self.mover.progress.keys > before:
                first_batch[0] = True
                crash_point("migrated")

        future = self.mover.submit(self.mover.move(by_source, still_allowed))
        try:
            while True:
                try:
                    moved = future.result(timeout=0.2)
                    break
                except TimeoutError:
                    pass
                self._report(state)
                if not dropped:
                    try:
                        self._check_marks(state)
                    except Exception as exc:  # noqa: BLE001 - ReshardStopped, Fenced, a ZooKeeper error: stop moving
                        dropped.append(exc)
        finally:
            self.result.move_seconds += time.monotonic() - began
            self._take_progress()
        self._report(state)
        log.info("reshard_moved", at=state.describe(), keys=moved, seconds=round(time.monotonic() - began, 3))
        return int(moved)

    def _take_progress(self) -> None:
        if self.mover is not None:
            p = self.mover.progress
            self.result.keys, self.result.bytes, self.result.big_keys = p.keys, p.bytes, p.big_keys
            self.result.scans = p.scans
            self.result.paced_keys = p.paced_keys
            self.result.longest_stall = p.stalls.longest

    def _report(self, state: ReshardState, force: bool = False) -> None:
        """The bar, and (about once a second) the live progress record ``status`` shows."""
        self._take_progress()
        elapsed = time.monotonic() - self.began
        keys = self.result.keys
        total = max(self.keys_total, keys)
        rate = keys / elapsed if elapsed > 0 else 0.0
        progress = ReshardProgress(
            keys_moved=keys, keys_total=total, bytes_moved=self.result.bytes, seconds=elapsed,
            keys_per_second=rate, eta_seconds=(total - keys) / rate if rate > 0 else None,
            longest_stall_ms=self.result.longest_stall * 1000)
        self.reporter.update(state.slots_done, progress)
        now = time.monotonic()
        if force or now - self.published >= 1.0:
            self.published = now
            try:
                self.store.publish_reshard_progress(progress)
            except Exception as exc:  # noqa: BLE001 - only what status shows suffers
                log.warning("reshard_progress_not_published", error=str(exc))

    def _commit(self, cur: Versioned[ReshardState], moved: int) -> Versioned[ReshardState]:
        """One transaction: the step's slots to their targets, marks cleared, and the next step marked."""
        slots = self.store.read_slots()
        table = slots.value
        for m in cur.value.current:
            if m not in table.migrating:
                raise CorruptData(f"the slot table no longer marks {m.lo}-{m.hi} migrating {m.source}->{m.target} "
                                  f"although the reshard is at {cur.value.describe()}")
        new_table = _with_owners(table, cur.value.current)
        state = cur.value.at(phase="committed", version=slots.version + 1, keys_moved=cur.value.keys_moved + moved)
        last = state.aborting or state.step == len(state.steps) - 1
        if not last:
            # Marking the next step in the same transaction saves a barrier per step: a proxy that
            # sees this record before the table holds the old step's slots for those milliseconds.
            state = self._cut_if_busy(state, state.step + 1)
            new_table = self._marked(state, new_table, state.step + 1)
            state = state.at(step=state.step + 1, phase="marked")
        self._commit_ops([
            Set(self.slots_path, new_table.encode(), slots.version),
            Set(self.path, state.encode(), cur.version),
        ])
        self.result.slots += sum(m.size for m in cur.value.current)
        self.result.steps += 1
        log.info("reshard_committed", at=cur.value.describe(), next=None if last else state.describe(),
                 slots_version=state.version)
        self._report(state)
        crash_point("committed")
        return Versioned(state, cur.version + 1)

    def _drop_old_keys(self, state: ReshardState) -> None:
        """--no-data: the old owners' keys of the step are dropped, so they can never come back stale."""
        groups = self.store.read_groups().value
        by_source: dict[str, set[int]] = {}
        for m in state.current:
            by_source.setdefault(m.source, set()).update(range(m.lo, m.hi + 1))
        for source, slots in by_source.items():
            g = groups.get(source)
            if g is not None:
                self.fence.check()
                self.result.deleted_keys += asyncio.run(
                    mover.delete_slots(g.master, slots, password=self.options.password,
                                       key_slot=self._tuning().key_slot))
        self.result.slots += sum(m.size for m in state.current)
        self.result.steps += 1

    def _finish(self, cur: Versioned[ReshardState]) -> None:
        self._commit_ops([Delete(self.path, cur.version)])
        self.result.aborted = cur.value.aborting
        log.info("reshard_finished" if not cur.value.aborting else "reshard_aborted", at=cur.value.describe())


async def _dbsize(address: str, password: str | None) -> int:
    async with Node(address, password=password) as node:
        return int(await node.call("DBSIZE"))


def _with_owners(table: SlotTable, moves: tuple[Migration, ...]) -> SlotTable:
    """``table`` with each move's slots owned by its target and its migrating mark gone."""
    owners = list(table.owners())
    for m in moves:
        owners[m.lo: m.hi + 1] = [m.target] * m.size
    return SlotTable.from_owners(owners, tuple(x for x in table.migrating if x not in moves))


def run(store: ClusterStore, options: Options, fence: Fence = NO_FENCE, reporter: Reporter | None = None) -> Result:
    return Executor(store, options, fence, reporter).run()


def abort(store: ClusterStore, options: Options, fence: Fence = NO_FENCE,
          reporter: Reporter | None = None) -> Result | None:
    """Stop the reshard: unmarked steps are dropped, a marked step is finished forward (see module doc)."""
    if request_abort(store, fence) is None:
        return None
    result = run(store, options, fence, reporter)
    result.aborted = True
    return result
