"""The reshard executor: a resumable state machine in the ``reshard`` znode that moves slots and their keys.

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
  reach a proxy as two watch events). An admin that dies in ``marked`` leaves those slots
  answering TRYAGAIN until ``--resume`` or ``--abort`` gets past the barrier.
- **move**: SCAN each source master and MIGRATE the keys of the step's slots (``mover``);
  idempotent, so a resumed admin simply runs it again.
- **commit**: one transaction sets owner=target, clears the step's marks and records
  ``phase=committed``.

Every side effect happens after the phase that allows it is saved, and every phase change is a
transaction together with the ``slots`` change it stands for, so an admin killed anywhere is
resumed by the next one from the znode alone.

Abort: slots of steps not yet marked stay with their owner. A step that is already marked is
*finished forward*, never rolled back: once the mark is applied, proxies move keys of those
slots to the target on every access, so keys may sit on both sides of the step; moving them
back would need every proxy to stop using the target first (another mark in the other
direction, with a window where two proxies move one key in opposite directions). Finishing
forward keeps the invariant that a slot's owner holds all its keys.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from kvstore_admin import mover
from kvstore_admin.errors import RESHARD_STOPPED, USER_ERROR, AdminError
from kvstore_admin.plan import Move, split_steps
from kvstore_cluster import paths
from kvstore_cluster.model import Migration, SlotTable
from kvstore_cluster.slots import format_slot_ranges, merge_ranges
from kvstore_cluster.store import Check, ClusterStore, CorruptData, Create, Delete, Set, Versioned

log = structlog.get_logger("kvstore.admin.reshard")

STATE_FORMAT = 1
PHASES = ("pending", "marked", "moving", "committed")
DEFAULT_SLOTS_PER_STEP = 1024
# A proxy that implements DESIGN.md step 3 (MIGRATE on the source, then the target; holding
# newly marked slots until the phase is 'moving') says so with "migration": 1 in its node.
PROXY_MIGRATION_PROTOCOL = 1

# Test hook: the admin exits (code 86, no cleanup, as if killed) right after the named step,
# so tests can resume a half-done reshard. Values: marked, acked, migrated (after the first
# MIGRATE batch), moved, committed.
CRASH_HOOK_ENV = "KVSTORE_TEST_CRASH_AFTER"
CRASH_HOOK_EXIT = 86

EXIT_CODES_HELP = f"""\b
Reshard exit codes (besides the ones of every command):
  {USER_ERROR}  bad request, or a reshard is already in progress (use --resume or --abort)
  {RESHARD_STOPPED}  the reshard stopped part-way (a proxy did not ack, MIGRATE failed, BUSYKEY);
      its state is kept: fix the cause, then --resume (or --abort)
"""


class ReshardStopped(AdminError):
    code = RESHARD_STOPPED


def _crash_point(step: str) -> None:
    if os.environ.get(CRASH_HOOK_ENV) == step:
        log.warning("test_crash_hook", step=step)
        os._exit(CRASH_HOOK_EXIT)


# --- the state kept in the reshard znode ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class State:
    request: dict[str, Any]  # what the user asked for, to recognise "the same command again"
    steps: tuple[tuple[Move, ...], ...]
    step: int = 0
    phase: str = "pending"
    version: int = -1  # the slots version the barrier of this phase waits for
    no_data: bool = False
    aborting: bool = False
    keys_moved: int = 0
    started_at: float = field(default_factory=time.time)

    @property
    def current(self) -> tuple[Move, ...]:
        return self.steps[self.step]

    @property
    def total_slots(self) -> int:
        return sum(m.size for s in self.steps for m in s)

    @property
    def slots_done(self) -> int:
        done = sum(m.size for s in self.steps[: self.step] for m in s)
        if self.phase == "committed":
            done += sum(m.size for m in self.current)
        return done

    def encode(self) -> bytes:
        return json.dumps({
            "format": STATE_FORMAT, "request": self.request,
            "steps": [[m.to_json() for m in s] for s in self.steps],
            "step": self.step, "phase": self.phase, "version": self.version, "no_data": self.no_data,
            "aborting": self.aborting, "keys_moved": self.keys_moved, "started_at": self.started_at,
        }, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> State:
        try:
            obj = json.loads(raw)
            if obj.get("format") != STATE_FORMAT:
                raise ValueError(f"unsupported format {obj.get('format')!r}")
            steps = tuple(tuple(Move.from_json(m) for m in s) for s in obj["steps"])
            state = cls(
                request=dict(obj["request"]), steps=steps, step=int(obj["step"]), phase=str(obj["phase"]),
                version=int(obj["version"]), no_data=bool(obj["no_data"]), aborting=bool(obj["aborting"]),
                keys_moved=int(obj["keys_moved"]), started_at=float(obj["started_at"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptData(f"the reshard znode holds malformed state: {exc}") from None
        if state.phase not in PHASES or not (0 <= state.step < len(steps)) or not all(steps):
            raise CorruptData(f"the reshard znode holds malformed state: step {state.step}, phase {state.phase!r}")
        return state

    def summary(self) -> dict[str, Any]:
        """What ``status`` shows of a reshard in progress (JSON-able)."""
        return {
            "request": self.request, "request_text": _request_text(self.request),
            "phase": self.phase, "step": self.step + 1, "steps": len(self.steps),
            "moving": [{"lo": m.lo, "hi": m.hi, "from": m.source, "to": m.target} for m in self.current],
            "slots_done": self.slots_done, "slots_total": self.total_slots, "keys_moved": self.keys_moved,
            "aborting": self.aborting, "no_data": self.no_data, "started_at": self.started_at,
        }

    def describe(self) -> str:
        what = ", ".join(f"{format_slot_ranges([(m.lo, m.hi)])} {m.source}->{m.target}" for m in self.current)
        return f"step {self.step + 1}/{len(self.steps)} ({what}), phase {self.phase}"


def read_state(store: ClusterStore) -> Versioned[State] | None:
    """The reshard in progress, or ``None``."""
    path = paths.reshard(store.cluster)
    if store.client.exists(path) is None:
        store.read_meta()  # a missing cluster is an error, not "no reshard"
        return None
    raw, version = store.read_raw(path)
    return Versioned(State.decode(raw), version)


def in_progress_error(state: State) -> AdminError:
    return AdminError(
        f"a reshard is already in progress ({_request_text(state.request)}, {state.describe()}); "
        "use --resume or --abort", USER_ERROR)


def _request_text(request: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(request.items()) if v not in (None, False))


# --- options, progress, result ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    batch: int = 100  # keys per MIGRATE
    parallel: int = 4  # MIGRATE workers per source
    timeout: float = 30.0  # seconds to wait for the proxies at each barrier
    slots_per_step: int = DEFAULT_SLOTS_PER_STEP
    migrate_timeout_ms: int = mover.MIGRATE_TIMEOUT_MS
    password: str | None = field(default=None, repr=False)  # the Redis nodes' (--redis-password)


class Reporter:
    """What the executor tells the user while it works; the CLI's progress bar overrides it."""

    def start(self, total_slots: int, slots_done: int, keys: int) -> None: ...

    def update(self, slots_done: int, keys: int) -> None: ...

    def finish(self) -> None: ...


@dataclass
class Result:
    slots: int = 0  # slots moved by this run
    keys: int = 0  # keys moved by this run
    steps: int = 0
    move_seconds: float = 0.0  # time spent in SCAN + MIGRATE only
    seconds: float = 0.0
    aborted: bool = False
    finished: bool = False
    deleted_keys: int = 0  # --no-data: keys dropped from the old owners

    def to_json(self) -> dict[str, Any]:
        return {
            "slots_moved": self.slots, "keys_moved": self.keys, "steps": self.steps,
            "seconds": round(self.seconds, 3), "move_seconds": round(self.move_seconds, 3),
            "keys_per_second": round(self.keys / self.move_seconds) if self.move_seconds > 0 else None,
            "aborted": self.aborted, "finished": self.finished, "keys_deleted": self.deleted_keys,
        }


# --- starting ----------------------------------------------------------------------------------------


def start(store: ClusterStore, moves: list[Move], request: dict[str, Any], *, no_data: bool = False,
          slots_per_step: int = DEFAULT_SLOTS_PER_STEP) -> Versioned[State]:
    """Record a new reshard (fails if one is in progress); nothing is marked yet."""
    existing = read_state(store)
    if existing is not None:
        raise in_progress_error(existing.value)
    slots = store.read_slots()
    if slots.value.migrating:
        leftover = format_slot_ranges(merge_ranges([(m.lo, m.hi) for m in slots.value.migrating]))
        raise AdminError(f"slots {leftover} are marked migrating but no reshard is recorded; "
                         "refusing to start another one over them", USER_ERROR)
    state = State(request=request, steps=tuple(tuple(s) for s in split_steps(moves, slots_per_step)),
                  no_data=no_data)
    path = paths.reshard(store.cluster)
    try:
        # Checking the slots version: the plan was computed from this very table.
        store.commit([Create(path, state.encode()), Check(paths.slots(store.cluster), slots.version)])
    except Exception:
        again = read_state(store)
        if again is not None:
            raise in_progress_error(again.value) from None
        raise
    log.info("reshard_started", steps=len(state.steps), slots=state.total_slots, no_data=no_data)
    return Versioned(state, 0)


def request_abort(store: ClusterStore) -> Versioned[State] | None:
    """Flag the reshard in progress as aborting (then ``run`` finishes the marked step and stops)."""
    current = read_state(store)
    if current is None or current.value.aborting:
        return current
    state = replace(current.value, aborting=True)
    store.commit([Set(paths.reshard(store.cluster), state.encode(), current.version)])
    log.info("reshard_abort_requested", at=state.describe())
    return Versioned(state, current.version + 1)


# --- the state machine -------------------------------------------------------------------------------


class Executor:
    def __init__(self, store: ClusterStore, options: Options, reporter: Reporter | None = None):
        self.store = store
        self.options = options
        self.reporter = reporter or Reporter()
        self.path = paths.reshard(store.cluster)
        self.slots_path = paths.slots(store.cluster)
        self.result = Result()
        self._keys_base = 0

    def run(self) -> Result:
        """Drive the recorded reshard to its end (or to the end of its marked step if aborting)."""
        began = time.monotonic()
        current = read_state(self.store)
        if current is None:
            self.result.finished = True
            return self.result
        self._keys_base = current.value.keys_moved
        self.reporter.start(current.value.total_slots, current.value.slots_done, current.value.keys_moved)
        try:
            while current is not None:
                current = self._advance(current)
        finally:
            self.result.seconds = time.monotonic() - began
            self.reporter.finish()
        self.result.finished = True
        return self.result

    def _advance(self, cur: Versioned[State]) -> Versioned[State] | None:
        state = cur.value
        if state.phase == "pending":
            if state.aborting:
                return self._finish(cur)
            return self._mark(cur, state.step)
        if state.phase == "marked":
            self._barrier(state, state.version)
            cur = self._set_phase(cur, "moving")
            _crash_point("acked")
            return cur
        if state.phase == "moving":
            # The barrier again: cheap, and a proxy that registered while no admin ran must have the mark too.
            self._barrier(state, state.version)
            moved = self._move(state)
            _crash_point("moved")
            return self._commit(cur, moved)
        # committed
        self._barrier(state, state.version)
        if state.no_data:
            self._drop_old_keys(state)
        if state.aborting or state.step == len(state.steps) - 1:
            return self._finish(cur)
        return self._mark(cur, state.step + 1)

    # each transition --------------------------------------------------------------------------------

    def _check_groups(self, moves: tuple[Move, ...]) -> dict[str, str]:
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

    def _mark(self, cur: Versioned[State], step: int) -> Versioned[State]:
        moves = cur.value.steps[step]
        self._check_groups(moves)
        self._check_proxies_migrate(self.store.proxies(), cur.value)
        slots = self.store.read_slots()
        table = slots.value
        for m in moves:
            for s in range(m.lo, m.hi + 1):
                if table.owner(s) != m.source:
                    raise ReshardStopped(
                        f"slot {s} should move from {m.source} but is owned by {table.owner(s)}: the slot table "
                        "changed under the reshard (a failover in cache mode?); run 'kvstore-admin reshard "
                        "--abort' and plan again")
                if table.migration_of(s) is not None:
                    raise ReshardStopped(f"slot {s} is already marked migrating outside this reshard")
        if cur.value.no_data:
            new_table = _with_owners(table, moves)
            phase = "committed"
        else:
            new_table = table.with_migrating(
                (*table.migrating, *(Migration(m.lo, m.hi, m.source, m.target) for m in moves)))
            # Validate now (SlotTable checks source == owner) rather than let a proxy reject it.
            new_table = SlotTable(new_table.ranges, new_table.migrating)
            phase = "marked"
        state = replace(cur.value, step=step, phase=phase, version=slots.version + 1)
        self.store.commit([
            Set(self.slots_path, new_table.encode(), slots.version),
            Set(self.path, state.encode(), cur.version),
        ])
        log.info("reshard_marked" if phase == "marked" else "reshard_reassigned", at=state.describe(),
                 slots_version=state.version)
        self.reporter.update(state.slots_done, state.keys_moved)
        _crash_point(phase)
        return Versioned(state, cur.version + 1)

    def _set_phase(self, cur: Versioned[State], phase: str) -> Versioned[State]:
        state = replace(cur.value, phase=phase)
        self.store.commit([Set(self.path, state.encode(), cur.version)])
        return Versioned(state, cur.version + 1)

    def _check_proxies_migrate(self, proxies: dict[str, Any], state: State) -> None:
        """Refuse marks while a registered proxy would not move keys of migrating slots.

        Such a proxy (an older version) keeps writing migrating slots on the source while keys
        move to the target: reads would miss and writes would split a key in two.
        """
        if state.no_data:
            return
        old = sorted(pid for pid, info in proxies.items()
                     if not (isinstance(info, dict) and isinstance(info.get("migration"), int)
                             and info["migration"] >= PROXY_MIGRATION_PROTOCOL))
        if old:
            raise ReshardStopped(
                f"proxies {', '.join(old)} do not move keys of migrating slots (no 'migration' >= "
                f"{PROXY_MIGRATION_PROTOCOL} in their registration); upgrade or stop them, then run "
                f"'kvstore-admin reshard --resume' (the reshard is at {state.describe()})")

    def _barrier(self, state: State, version: int) -> None:
        """Wait until every registered proxy has applied slots ``version`` (zero proxies: at once)."""
        deadline = time.monotonic() + self.options.timeout
        pause = 0.002
        while True:
            stale = {}
            proxies = self.store.proxies()
            if state.phase in ("marked", "moving"):
                self._check_proxies_migrate(proxies, state)
            for pid, info in proxies.items():
                applied = info.get("slots_version") if isinstance(info, dict) else None
                if not isinstance(applied, int) or applied < version:
                    stale[pid] = applied
            if not stale:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(f"{pid} (at {v if v is not None else 'unknown'})" for pid, v in sorted(stale.items()))
                raise ReshardStopped(
                    f"proxies did not apply slots version {version} within {self.options.timeout:g}s: {names}. "
                    f"The reshard is stopped at {state.describe()} and is resumable: fix or stop those proxies "
                    "(a stopped proxy's node goes away with its ZooKeeper session), then run "
                    "'kvstore-admin reshard --resume'")
            # Proxies apply a table within milliseconds, and newly marked slots are held
            # (TRYAGAIN) until this barrier passes: poll fast at first, then back off.
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _check_marks(self, state: State) -> None:
        """Stop unless the slot table still marks every migration of this step.

        The sentinel drops the marks of a failed cache group's migrations (and the reshard znode);
        keys moved after that would land in a group that does not own their slot.
        """
        table = self.store.read_slots().value
        for m in state.current:
            if Migration(m.lo, m.hi, m.source, m.target) not in table.migrating:
                raise ReshardStopped(
                    f"slots {m.lo}-{m.hi} are no longer marked migrating {m.source}->{m.target} (a group "
                    "failed and its slots were reassigned); run 'kvstore-admin reshard --abort', then "
                    "rebalance again")

    def _move(self, state: State) -> int:
        self._check_marks(state)
        masters = self._check_groups(state.current)
        by_source: dict[str, dict[int, str]] = {}
        for m in state.current:
            targets = by_source.setdefault(m.source, {})
            for s in range(m.lo, m.hi + 1):
                targets[s] = masters[m.target]
        progress = mover.Progress()
        first_batch = threading.Event()
        dropped: list[BaseException] = []

        def still_allowed() -> None:
            if dropped:
                raise dropped[0]

        def on_batch() -> None:
            if not first_batch.is_set():
                first_batch.set()
                _crash_point("migrated")

        errors: list[BaseException] = []

        def run_source(source: str, slot_targets: dict[int, str]) -> None:
            try:
                mover.move_slots(masters[source], slot_targets, batch=self.options.batch,
                                 parallel=self.options.parallel, timeout_ms=self.options.migrate_timeout_ms,
                                 progress=progress, on_batch=on_batch, password=self.options.password,
                                 still_allowed=still_allowed)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                errors.append(exc)

        began = time.monotonic()
        threads = [threading.Thread(target=run_source, args=(src, t), name=f"move-{src}", daemon=True)
                   for src, t in by_source.items()]
        for th in threads:
            th.start()
        done = state.slots_done
        for th in threads:
            while th.is_alive():
                th.join(0.2)
                self.reporter.update(done, state.keys_moved + progress.keys)
                if not dropped:
                    try:
                        self._check_marks(state)
                    except ReshardStopped as exc:
                        dropped.append(exc)
        self.result.move_seconds += time.monotonic() - began
        self.result.keys += progress.keys
        self.reporter.update(done, state.keys_moved + progress.keys)
        if errors:
            # Keys already moved are where they belong (the slots are still migrating): only the
            # count in the znode is behind, which is cosmetic.
            raise errors[0]
        log.info("reshard_moved", at=state.describe(), keys=progress.keys)
        return progress.keys

    def _commit(self, cur: Versioned[State], moved: int) -> Versioned[State]:
        slots = self.store.read_slots()
        table = slots.value
        for m in cur.value.current:
            if Migration(m.lo, m.hi, m.source, m.target) not in table.migrating:
                raise CorruptData(f"the slot table no longer marks {m.lo}-{m.hi} migrating {m.source}->{m.target} "
                                  f"although the reshard is at {cur.value.describe()}")
        new_table = _with_owners(table, cur.value.current)
        state = replace(cur.value, phase="committed", version=slots.version + 1,
                        keys_moved=cur.value.keys_moved + moved)
        self.store.commit([
            Set(self.slots_path, new_table.encode(), slots.version),
            Set(self.path, state.encode(), cur.version),
        ])
        self.result.slots += sum(m.size for m in state.current)
        self.result.steps += 1
        log.info("reshard_committed", at=state.describe(), slots_version=state.version)
        self.reporter.update(state.slots_done, state.keys_moved)
        _crash_point("committed")
        return Versioned(state, cur.version + 1)

    def _drop_old_keys(self, state: State) -> None:
        """--no-data: the old owners' keys of the step are dropped, so they can never come back stale."""
        groups = self.store.read_groups().value
        by_source: dict[str, set[int]] = {}
        for m in state.current:
            by_source.setdefault(m.source, set()).update(range(m.lo, m.hi + 1))
        for source, slots in by_source.items():
            g = groups.get(source)
            if g is not None:
                self.result.deleted_keys += mover.delete_slots(g.master, slots, password=self.options.password)
        self.result.slots += sum(m.size for m in state.current)
        self.result.steps += 1

    def _finish(self, cur: Versioned[State]) -> None:
        self.store.commit([Delete(self.path, cur.version)])
        self.result.aborted = cur.value.aborting
        log.info("reshard_finished" if not cur.value.aborting else "reshard_aborted", at=cur.value.describe())
        return None


def _with_owners(table: SlotTable, moves: tuple[Move, ...]) -> SlotTable:
    """``table`` with each move's slots owned by its target and its migrating mark gone."""
    owners = list(table.owners())
    done = {Migration(m.lo, m.hi, m.source, m.target) for m in moves}
    for m in moves:
        owners[m.lo: m.hi + 1] = [m.target] * m.size
    return SlotTable.from_owners(owners, tuple(x for x in table.migrating if x not in done))


def run(store: ClusterStore, options: Options, reporter: Reporter | None = None) -> Result:
    return Executor(store, options, reporter).run()


def abort(store: ClusterStore, options: Options, reporter: Reporter | None = None) -> Result | None:
    """Stop the reshard: unmarked steps are dropped, a marked step is finished forward (see module doc)."""
    if request_abort(store) is None:
        return None
    result = run(store, options, reporter)
    result.aborted = True
    return result

