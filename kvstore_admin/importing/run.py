"""The import from start to end: checks, snapshot or resume, following the stream, cutover, verify.

Where things are kept so that an import stopped anywhere resumes without a write lost or applied
twice:

- the ``import`` znode (kvstore_cluster.import_state) says which source, which replication
  history, and the phase: ``snapshot`` is written *before* the first key is copied, ``streaming``
  once every group holds the whole snapshot and its marker, ``done`` after a cutover;
- each group's marker (same transaction as the commands it covers) is the exact offset that group
  has applied; a resume asks the source to continue after the lowest one, and each group skips
  what it already has (:mod:`apply`);
- when the source cannot continue from there (its backlog moved on, it restarted), or the copy of
  the snapshot was cut short, or the slot owners changed since, a new snapshot is copied over the
  old keys (RESTORE ... REPLACE) and keys the source no longer has are deleted from the cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from kvstore_admin.errors import DIFFERENT, IMPORT_STOPPED, NODE_FAILED, USER_ERROR, AdminError
from kvstore_admin.importing import apply, source
from kvstore_admin.importing.groups import GroupError, GroupLink, Marker
from kvstore_admin.importing.progress import Progress
from kvstore_admin.importing.resp import Conn, LinkError, ProtocolError, ReplyError
from kvstore_admin.importing.routing import CommandTable, Router
from kvstore_admin.importing.scratch import Scratch, stream_db
from kvstore_admin.importing.snapshot import BIG_KEY_BYTES, Copier
from kvstore_admin.importing.spool import Spool, SpoolClosed
from kvstore_admin.importing.testhooks import crash_point
from kvstore_admin.importing.verify import Report, Verifier
from kvstore_cluster import paths
from kvstore_cluster.import_state import ImportRunner, ImportState, slots_digest
from kvstore_cluster.keyrules import KeyRules
from kvstore_cluster.model import Groups, ModelError, SlotTable
from kvstore_cluster.store import ClusterStore, Create, Delete, Set, Versioned

log = structlog.get_logger("kvstore.admin.import")

RECORD_EVERY = 5.0  # seconds between updates of the import znode while following
LAG_EVERY = 1.0  # seconds between INFO calls to the source for its offset
CATCHUP_BYTES = 1 << 20  # the cutover pauses the source once the cluster is this close
PAUSE_MARGIN = 0.5  # seconds of the pause kept back for reporting


class ImportStopped(AdminError):
    """The import stopped part-way; its state is kept and running it again resumes it."""

    code = IMPORT_STOPPED


class Interrupted(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Options:
    source: str
    password: str | None = field(default=None, repr=False)
    db: int = 0
    cutover: bool = False
    pause: float = 30.0  # seconds the source stays paused at the cutover
    verify: bool = False
    verify_keys: int | None = 10_000  # None: every key
    ttl_tolerance_ms: int = 0
    work_dir: Path | None = None
    big_key_bytes: int = BIG_KEY_BYTES
    disk_snapshot: bool = False  # the source writes the snapshot to its disk first (no diskless-sync delay)
    cluster_password: str | None = field(default=None, repr=False)
    catchup_bytes: int = CATCHUP_BYTES


@dataclass
class Summary:
    source: str
    db: int
    role: str = "master"
    source_version: str = ""
    source_keys: int = 0  # in the imported database when the import started
    start: str = ""  # "snapshot", "resync" or "continue"
    start_reason: str = ""
    result: str = ""
    snapshot: dict[str, Any] | None = None
    stream: dict[str, Any] = field(default_factory=dict)
    cutover: dict[str, Any] | None = None
    verify: dict[str, Any] | None = None
    seconds: float = 0.0
    exit_code: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "db": self.db, "role": self.role, "source_version": self.source_version,
            "source_keys": self.source_keys, "start": self.start,
            "start_reason": self.start_reason, "result": self.result, "snapshot": self.snapshot,
            "stream": self.stream, "cutover": self.cutover, "verify": self.verify,
            "seconds": round(self.seconds, 3), "exit_code": self.exit_code,
        }


# --- checks before anything is written -----------------------------------------------------------------


def cluster_layout(store: ClusterStore) -> tuple[Groups, SlotTable, Router]:
    """The groups and slot table to route with; refused while a reshard is in progress."""
    groups = store.read_groups().value
    slots = store.read_slots().value
    if store.client.exists(paths.reshard(store.cluster)) is not None or slots.migrating:
        raise AdminError("a reshard is in progress; import once it is finished ('kvstore-admin status' shows it): "
                         "keys routed while slots move could land in a group that no longer owns them", USER_ERROR)
    rules = store.read_keyrules().value
    if rules.change is not None:
        raise AdminError("a key rule change is in progress; import once it is finished ('kvstore-admin keyrule "
                         "resume')", USER_ERROR)
    return groups, slots, Router(slots, groups, rules.slotter())


def refuse_cutover_on_replica(info: source.SourceInfo) -> None:
    if info.role == "replica":
        raise AdminError(
            f"--cutover refused: the source {info.address} is a replica of {info.master}; pausing its writes "
            f"would not stop the application's, which go to {info.master}. Import without --cutover to follow "
            f"it, or import from {info.master} to cut over", USER_ERROR)


@contextmanager
def import_lock(store: ClusterStore) -> Iterator[None]:
    """One import per cluster: an ephemeral znode naming this process (taken over from a dead one on this host)."""
    path = paths.import_lock(store.cluster)
    me = ImportRunner(socket.gethostname(), os.getpid())
    store.read_meta()
    for _ in range(3):
        try:
            store.client.create(path, me.encode(), ephemeral=True)
            break
        except NodeExistsError:
            holder = store.read_import_runner()
            if holder is None:
                continue
            other = holder.value
            if other.host == me.host and not _alive(other.pid):
                # Its process is dead; the znode only waits for the ZooKeeper session to expire.
                try:
                    store.client.delete(path, version=holder.version)
                except (NoNodeError, BadVersionError):
                    pass
                continue
            raise AdminError(f"another import is running on this cluster ({other.host}, pid {other.pid}, since "
                             f"{_when(other.started_at)}); one at a time", USER_ERROR) from None
    else:
        raise AdminError("could not take the import lock (it keeps changing hands)", USER_ERROR)
    try:
        yield
    finally:
        try:
            store.client.delete(path)
        except Exception:  # noqa: BLE001 - the session's end removes it anyway
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TopologyWatch:
    """Stops the import when the groups it writes to or the slot owners it routes with change."""

    def __init__(self, store: ClusterStore, groups: Groups, slots: SlotTable, router: Router):
        self.reason: str | None = None
        self.masters = dict(zip(router.ids, router.masters, strict=True))
        self.ranges = slots.ranges
        self.active = True
        self._watch(store, paths.slots(store.cluster), "slot table", SlotTable.decode, self._slots_changed)
        self._watch(store, paths.groups(store.cluster), "groups", Groups.decode, self._groups_changed)
        self.rules = store.read_keyrules().value
        self._watch(store, paths.keyrules(store.cluster), "key rules", KeyRules.decode, self._rules_changed,
                    absent=KeyRules())

    def _watch(self, store: ClusterStore, path: str, what: str, decode: Any, changed: Any,
               absent: Any = None) -> None:
        """``absent``: what a missing znode means (None: the record must exist)."""
        def on_data(data: bytes | None, stat: Any, event: Any = None) -> bool | None:
            if not self.active:
                return False
            if data is None and absent is None:
                self.reason = f"the cluster's {what} disappeared"
                return None
            try:
                reason = changed(decode(data) if data is not None else absent)
            except ModelError as exc:
                log.error("import_bad_record", record=what, error=str(exc))  # keep going on what we had
                return None
            if reason is not None:
                self.reason = reason
            return None

        store.client.DataWatch(path, on_data)

    def _slots_changed(self, table: SlotTable) -> str | None:
        if table.migrating:
            return "a reshard started (slots are migrating)"
        return "slot owners changed" if table.ranges != self.ranges else None

    def _rules_changed(self, rules: KeyRules) -> str | None:
        return "the key rules changed" if rules != self.rules else None

    def _groups_changed(self, groups: Groups) -> str | None:
        for gid, master in self.masters.items():
            g = groups.get(gid)
            if g is None or g.master != master or g.state != "ok":
                return f"group {gid} changed (master or state)"
        return None

    def close(self) -> None:
        self.active = False


# --- the import ---------------------------------------------------------------------------------------


@dataclass
class Resume:
    replid: str
    offset: int
    selected: int
    skip: list[int]


class Importer:
    def __init__(self, store: ClusterStore, options: Options, progress: Progress, stop: threading.Event,
                 prompt: bool = False):
        self.store = store
        self.opts = options
        self.progress = progress
        self.stop = stop
        # Interactive: once caught up, Enter on stdin asks for the cutover (read by a daemon thread).
        self.prompt = prompt and not options.cutover
        self.cutover_requested = threading.Event()
        if self.prompt:
            threading.Thread(target=self._read_enter, name="import-prompt", daemon=True).start()
        self.summary = Summary(source=options.source, db=options.db)
        self.record: Versioned[ImportState] | None = None
        self.links: list[GroupLink] = []
        self.control: GroupLink | None = None
        self.link: source.ReplicationLink | None = None
        self.scratch: Scratch | None = None
        self.src: Conn | None = None
        self.workdir: Path | None = None
        self.watch: TopologyWatch | None = None
        self.applier: apply.Applier | None = None

    def _read_enter(self) -> None:
        try:
            if sys.stdin.readline():
                self.cutover_requested.set()
        except (OSError, ValueError):
            pass

    # entry points

    def run(self) -> Summary:
        started = time.monotonic()
        opts = self.opts
        try:
            self.src = source.connect(opts.source, opts.password)
            info = source.probe(self.src, opts.db)
            self.summary.role, self.summary.source_version = info.role, info.version
            self.summary.source_keys = info.keys
            if opts.cutover:
                refuse_cutover_on_replica(info)
            groups, slots, router = cluster_layout(self.store)
            with import_lock(self.store):
                self._run_locked(info, groups, slots, router)
        except Interrupted:
            self.summary.result = "stopped while copying the snapshot; the next run copies a fresh one"
        except (LinkError, ProtocolError, ReplyError) as exc:
            # A connection failed where nothing more specific was said: the state is kept, the run can resume.
            raise ImportStopped(f"the import stopped: {exc}; run the same command again to resume") from None
        finally:
            self._cleanup()
            self.summary.seconds = time.monotonic() - started
        return self.summary

    def _run_locked(self, info: source.SourceInfo, groups: Groups, slots: SlotTable, router: Router) -> None:
        opts = self.opts
        self.record = self.store.read_import()
        rec = self.record.value if self.record else None
        if rec is not None and (rec.source, rec.db) != (opts.source, opts.db):
            raise AdminError(f"an import from {rec.source} (db {rec.db}) is recorded on this cluster; finish it, "
                             "or drop its record with 'kvstore-admin import --forget'", USER_ERROR)
        if rec is not None and rec.phase == "done":
            raise AdminError(f"the import from {rec.source} (db {rec.db}) was cut over at "
                             f"{_when(rec.finished_at)}; to import again, 'kvstore-admin import --forget' first",
                             USER_ERROR)
        self.links = [GroupLink(gid, addr, opts.cluster_password) for gid, addr in zip(router.ids, router.masters,
                                                                                        strict=True)]
        self.control = GroupLink(router.ids[0], router.masters[0], opts.cluster_password)
        table = CommandTable(self.control.call("COMMAND"))
        digest = slots_digest(slots)
        resume, why = self._plan(rec, digest)
        if rec is None:
            self._require_empty()
        self.watch = TopologyWatch(self.store, groups, slots, router)
        self.workdir = make_workdir(opts.work_dir)
        spool = Spool(self.workdir)
        self.link = source.ReplicationLink(opts.source, opts.password, spool, disk_snapshot=opts.disk_snapshot)
        sync = self.link.handshake(resume.replid if resume else None, resume.offset if resume else None)
        if sync.full:
            self.summary.start = "snapshot" if rec is None else "resync"
            self.summary.start_reason = why
            if resume is not None:
                self.summary.start_reason = (f"the source cannot continue after offset {resume.offset:,} (its "
                                             "backlog no longer holds it, or it restarted)")
            if rec is not None:
                self.progress.message(f"copying a fresh snapshot: {self.summary.start_reason}")
            selected = self._snapshot(sync, info, router, digest, resync=rec is not None)
            self.applier = apply.Applier(router, self.links, table, self.control, opts.db, sync.replid,
                                         sync.offset, selected)
        else:
            assert resume is not None
            self.summary.start = "continue"
            self.summary.start_reason = f"continuing after offset {resume.offset}"
            self.progress.message(f"resuming: the source continues its stream after offset {resume.offset:,}")
            self.link.start_stream()
            self.applier = apply.Applier(router, self.links, table, self.control, opts.db, sync.replid,
                                         resume.offset, resume.selected, resume.skip)
            if rec is not None and sync.replid != rec.replid:
                self._save(replid=sync.replid)  # the source's history got a new id (a failover): offsets go on
        self._follow(spool)

    def _plan(self, rec: ImportState | None, digest: str) -> tuple[Resume | None, str]:
        """Where to resume from (``None``: a full snapshot is needed, with why)."""
        if rec is None:
            return None, "first run"
        if rec.phase == "snapshot":
            return None, "the previous run stopped while copying the snapshot"
        if rec.slots_digest != digest:
            return None, "slot owners changed since the import started"
        markers = [link.read_marker() for link in self.links]
        missing = [link.gid for link, m in zip(self.links, markers, strict=True) if m is None]
        if missing:
            return None, f"group(s) {', '.join(missing)} hold no import marker"
        replids = {m.replid for m in markers if m is not None}
        if len(replids) != 1:
            return None, "the groups' markers belong to different replication histories"
        low = min((m for m in markers if m is not None), key=lambda m: m.offset)
        return Resume(low.replid, low.offset, low.db, [m.offset for m in markers if m is not None]), ""

    def _require_empty(self) -> None:
        sizes = {link.gid: int(link.call("DBSIZE")) for link in self.links}
        full = {g: n for g, n in sizes.items() if n}
        if full:
            shown = ", ".join(f"{g}: {n:,}" for g, n in full.items())
            raise AdminError(f"the cluster already holds keys ({shown}); the import copies a source into an empty "
                             "cluster, so that what it copies is exactly the source's data", USER_ERROR)

    def _snapshot(self, sync: source.Sync, info: source.SourceInfo, router: Router, digest: str,
                  resync: bool) -> int:
        """Copy the snapshot; returns the database the stream after it starts in."""
        opts = self.opts
        assert self.link is not None and self.workdir is not None
        now = time.time()
        state = ImportState(source=opts.source, db=opts.db, phase="snapshot", replid=sync.replid,
                            snapshot_offset=sync.offset, offset=sync.offset, slots_digest=digest,
                            started_at=self.record.value.started_at if self.record else now, updated_at=now)
        self._write(state)
        self.progress.message(f"snapshot of {opts.source} at offset {sync.offset:,}: receiving{self._delay_note()}")
        t0 = time.monotonic()
        scratch = Scratch(self.workdir, databases=max(16, info.max_db + 1, opts.db + 1))
        def on_bytes(received: int) -> None:
            self.progress.rdb(received)
            if self.stop.is_set():
                raise Interrupted()

        rdb_size = self.link.receive_rdb(scratch.rdb, on_bytes)
        log.info("import_snapshot_received", bytes=rdb_size, seconds=round(time.monotonic() - t0, 3))
        self.link.start_stream()
        selected = stream_db(scratch.rdb)
        t_rdb = time.monotonic()
        self.scratch = scratch
        scratch.start()
        t_load = time.monotonic()
        log.info("import_snapshot_loaded", seconds=round(t_load - t_rdb, 3))
        conn, side = scratch.connect(opts.db), scratch.connect(opts.db)
        total = int(conn.call("DBSIZE"))
        self.progress.snapshot_start(total)

        def on_progress(stats: Any) -> None:
            self.progress.snapshot(stats.keys)
            crash_point("snapshot")
            if self.stop.is_set():
                raise Interrupted()
            if self.watch is not None and self.watch.reason is not None:
                raise ImportStopped(f"the import stopped while copying the snapshot: {self.watch.reason}. Run it "
                                    "again once the cluster is settled; it copies a fresh snapshot")

        copier = Copier(conn, side, router, self.links, opts.big_key_bytes, on_progress)
        try:
            stats = copier.copy()
            if resync:
                copier.drop_stale()
            functions = _copy_functions(side, self.links)
            side_info = side.call("INFO", "cpu")
        finally:
            self.progress.snapshot_done()
            conn.close()
            side.close()
        cpu = {k: v for k, v in source.parse_info(side_info).items() if k in ("used_cpu_user", "used_cpu_sys")}
        log.info("import_scratch_cpu", **cpu)  # the cost of loading and reading the snapshot, for tuning
        scratch.stop()
        self.scratch = None
        for link in self.links:
            link.write_marker(Marker(sync.replid, sync.offset, selected))
        copied = time.monotonic() - t0
        self.summary.snapshot = {
            "keys": stats.keys, "big_keys": stats.big_keys, "rdb_bytes": rdb_size,
            "stale_keys_deleted": stats.stale_deleted, "functions_copied": functions,
            "receive_seconds": round(t_rdb - t0, 3), "load_seconds": round(t_load - t_rdb, 3),
            "seconds": round(copied, 3), "keys_per_second": round(stats.keys / copied) if copied > 0 else None,
        }
        self._save(phase="streaming", snapshot_keys=stats.keys)
        log.info("import_snapshot_copied", keys=stats.keys, seconds=round(copied, 3), spooled=self.link.spool.buffered)
        self.progress.message(f"snapshot copied: {stats.keys:,} keys in {copied:.1f}s; following the source's writes")
        return selected

    def _delay_note(self) -> str:
        """Why nothing may arrive for a while: a diskless source waits for more replicas first."""
        assert self.src is not None
        try:
            flat = self.src.call("CONFIG", "GET", "repl-diskless-sync*")
        except (ReplyError, LinkError):
            return ""  # CONFIG renamed or not allowed: nothing to say
        conf = dict(zip(flat[0::2], flat[1::2], strict=False)) if isinstance(flat, list) else {}
        delay = conf.get(b"repl-diskless-sync-delay", b"0")
        diskless = conf.get(b"repl-diskless-sync") == b"yes" and not self.opts.disk_snapshot
        if diskless and delay.isdigit() and int(delay) > 0:
            return f" (the source waits {int(delay)}s, its repl-diskless-sync-delay, before it starts sending)"
        return ""

    # --- following --------------------------------------------------------------------------------------

    def _follow(self, spool: Spool) -> None:
        applier, link, src = self.applier, self.link, self.src
        assert applier is not None and link is not None and src is not None and self.watch is not None
        last_lag = last_record = 0.0
        source_offset = self._source_offset(src, applier.offset)
        prompted = False
        while True:
            if self.stop.is_set():
                applier.sync()
                self.summary.result = "stopped; run the same command again to resume"
                break
            if self.watch.reason is not None:
                applier.sync()
                self._save()
                raise ImportStopped(f"the import stopped: {self.watch.reason}. Run it again once the cluster is "
                                    "settled; it resumes (with a fresh snapshot if slot owners changed)")
            try:
                data = spool.read(apply.BATCH_BYTES, apply.BATCH_SECONDS)
            except SpoolClosed as exc:
                applier.sync()
                self._save()
                raise ImportStopped(f"the import stopped: {exc.reason}; everything received was applied "
                                    f"(offset {applier.applied:,}). Run the same command again to resume") from None
            if data:
                try:
                    applier.feed(data)
                except apply.StreamError:
                    applier.sync()  # what came before the bad part is applied and recorded
                    self._save()
                    raise
            now = time.monotonic()
            if applier.due(now):
                applier.flush()
                crash_point("streaming")
            applier.settle()
            link.applied = applier.applied
            if now - last_lag >= LAG_EVERY:
                last_lag = now
                source_offset = self._source_offset(src, source_offset)
                self.progress.follow(applier.stats.commands, max(0, source_offset - applier.applied),
                                     applier.applied)
            if now - last_record >= RECORD_EVERY:
                last_record = now
                self._save()
            caught_up = spool.buffered == 0 and source_offset - applier.offset < self.opts.catchup_bytes
            if caught_up and (self.opts.cutover or self.cutover_requested.is_set()):
                log.info("import_caught_up", offset=applier.offset, lag=max(0, source_offset - applier.offset))
                self._cutover(spool)
                break
            if caught_up and self.prompt and not prompted:
                prompted = True
                self.progress.message(f"caught up with the source (lag {max(0, source_offset - applier.offset):,} "
                                      f"bytes). Press Enter to cut over (the source's writes pause for "
                                      f"{self.opts.pause:g}s), Ctrl-C to stop here (resumable)")
        self._finish_stream()

    def _source_offset(self, src: Conn, previous: int) -> int:
        try:
            return source.master_offset(src)
        except (LinkError, ReplyError, ValueError) as exc:
            log.warning("import_source_offset_failed", error=str(exc))
            return previous

    def _finish_stream(self) -> None:
        applier = self.applier
        assert applier is not None
        applier.sync()
        if self.link is not None:
            self.link.applied = applier.applied
        stats = applier.stats
        self.summary.stream = {
            "commands": stats.commands, "skipped_already_applied": stats.skipped_resume,
            "errors": stats.errors, "error_examples": stats.error_examples, "unsupported": stats.unsupported,
            "applied_offset": applier.applied, "replid": applier.replid,
        }
        if stats.errors and not self.summary.exit_code:
            self.summary.exit_code = DIFFERENT
        if self.record is not None and self.record.value.phase != "done":
            self._save()

    # --- cutover -----------------------------------------------------------------------------------------

    def _cutover(self, spool: Spool) -> None:
        opts, applier, src = self.opts, self.applier, self.src
        assert applier is not None and src is not None
        pause_ms = int(opts.pause * 1000)
        try:
            src.call("CLIENT", "PAUSE", pause_ms, "WRITE")
        except ReplyError as exc:
            raise AdminError(f"the source refused CLIENT PAUSE {pause_ms} WRITE ({exc}); the cutover needs "
                             "Redis 6.2 or later. The import is in sync up to now and resumable") from None
        paused_at = time.time()
        deadline = time.monotonic() + opts.pause - PAUSE_MARGIN
        target = source.master_offset(src)
        log.info("import_source_paused", target=target, offset=applier.offset)
        self.progress.message(f"source writes paused for {opts.pause:g}s; applying the stream up to offset "
                              f"{target:,}")
        while applier.offset < target:
            if time.monotonic() > deadline:
                _unpause(src)
                raise ImportStopped(f"cutover failed: the cluster did not reach the source's offset {target:,} "
                                    f"within the {opts.pause:g}s pause (at {applier.offset:,}); the source's writes "
                                    "were resumed. The import is resumable: run it again, maybe with a longer "
                                    "--pause")
            try:
                data = spool.read(apply.BATCH_BYTES, apply.BATCH_SECONDS)
            except SpoolClosed as exc:
                _unpause(src)
                raise ImportStopped(f"cutover failed: {exc.reason}; the source's writes were resumed") from None
            if data:
                applier.feed(data)
        applier.sync()
        in_sync_at = time.time()
        paused_until = paused_at + opts.pause
        self.summary.cutover = {
            "offset": target, "paused_at": round(paused_at, 3), "paused_until": round(paused_until, 3),
            "pause_seconds": opts.pause, "in_sync_seconds": round(in_sync_at - paused_at, 3),
        }
        self.progress.message(
            f"IN SYNC: the cluster has every write of the source up to offset {target:,}. The source's writes stay "
            f"paused until {time.strftime('%H:%M:%S', time.localtime(paused_until))} "
            f"({paused_until - time.time():.0f}s from now): point the application at the proxy now")
        if opts.verify:
            report = self._verify(remaining=paused_until - time.time())
            if not report.ok:
                self.summary.result = "in sync, but verify found differences; the import stays resumable"
                self.summary.exit_code = DIFFERENT
                return
        for link in self.links:
            link.delete_marker()
        self._save(phase="done", finished_at=in_sync_at)
        self.summary.result = "cut over: the cluster is in sync with the paused source"

    def _verify(self, remaining: float | None = None) -> Report:
        assert self.src is not None
        self.src.call("SELECT", self.opts.db)
        try:
            report = verify_with(self.src, self.links_conns(), self.router_for_verify(), self.opts)
        finally:
            self.src.call("SELECT", 0)
        self.summary.verify = report.to_json()
        if remaining is not None and report.seconds > remaining:
            self.summary.verify["note"] = "the verify outlasted the pause, so writes made after it may differ"
        return report

    def links_conns(self) -> list[Conn]:
        for link in self.links:
            link.drain()
        return [link.conn for link in self.links]

    def router_for_verify(self) -> Router:
        assert self.applier is not None
        return self.applier.router

    # --- the record ----------------------------------------------------------------------------------------

    def _write(self, state: ImportState) -> None:
        path = paths.import_state(self.store.cluster)
        if self.record is None:
            self.store.commit([Create(path, state.encode())])
            self.record = Versioned(state, 0)
        else:
            self.store.commit([Set(path, state.encode(), self.record.version)])
            self.record = Versioned(state, self.record.version + 1)

    def _save(self, **changes: Any) -> None:
        if self.record is None:
            return
        applier = self.applier
        if applier is not None:
            changes.setdefault("offset", applier.applied)
            changes.setdefault("replid", applier.replid)
        self._write(replace(self.record.value, updated_at=time.time(), **changes))

    def _cleanup(self) -> None:
        if self.watch is not None:
            self.watch.close()
        if self.link is not None:
            self.link.stop()
        if self.scratch is not None:
            self.scratch.stop()
        for link in self.links:
            link.close()
        if self.control is not None:
            self.control.close()
        if self.src is not None:
            self.src.close()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.progress.close()


WORKDIR_PREFIX = "kvstore-import-"
OWNER_FILE = "owner"


def make_workdir(parent: Path | None) -> Path:
    """A fresh work directory, after removing those left by imports that died (same host, process gone):
    a killed import leaves its snapshot behind, as big as the source's data set."""
    base = Path(parent or tempfile.gettempdir())
    for old in base.glob(f"{WORKDIR_PREFIX}*"):
        try:
            host, _, pid = (old / OWNER_FILE).read_text().partition(" ")
        except OSError:
            continue
        if host == socket.gethostname() and pid.strip().isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=base))
    (path / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}")
    return path


def _unpause(src: Conn) -> None:
    try:
        src.call("CLIENT", "UNPAUSE")
    except (LinkError, ReplyError) as exc:
        log.warning("import_unpause_failed", error=str(exc))


def _when(at: float | None) -> str:
    return "an unknown time" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _copy_functions(scratch: Conn, links: list[GroupLink]) -> int:
    """Functions of the source (FUNCTION DUMP from the snapshot) restored on every group's master."""
    try:
        functions = scratch.call("FUNCTION", "LIST")
    except ReplyError:
        return 0
    if not functions:
        return 0
    payload = scratch.call("FUNCTION", "DUMP")
    for link in links:
        link.call("FUNCTION", "RESTORE", payload, "REPLACE")
    return len(functions)


def verify_with(src: Conn, masters: list[Conn], router: Router, opts: Options) -> Report:
    return Verifier(src, masters, router, opts.ttl_tolerance_ms).run(opts.verify_keys)


# --- the other modes -----------------------------------------------------------------------------------


def run_verify(store: ClusterStore, opts: Options) -> Report:
    """``--verify`` alone: compare the source's database with the cluster, change nothing."""
    _, _, router = cluster_layout(store)
    src = source.connect(opts.source, opts.password)
    masters: list[Conn] = []
    try:
        src.call("SELECT", opts.db)
        for gid, addr in zip(router.ids, router.masters, strict=True):
            masters.append(GroupLink(gid, addr, opts.cluster_password).conn)
        return verify_with(src, masters, router, opts)
    except ReplyError as exc:
        raise AdminError(f"verify failed: {exc}") from None
    except (LinkError, GroupError) as exc:
        raise AdminError(f"verify failed: {exc}", NODE_FAILED) from None
    finally:
        src.close()
        for conn in masters:
            conn.close()


def forget(store: ClusterStore, cluster_password: str | None) -> ImportState | None:
    """Drop the import's record and the groups' markers (the imported keys stay)."""
    with import_lock(store):
        current = store.read_import()
        groups = store.read_groups().value
        for g in groups:
            if g.state != "ok":
                continue
            link = GroupLink(g.id, g.master, cluster_password)
            try:
                link.delete_marker()
            finally:
                link.close()
        if current is not None:
            store.commit([Delete(paths.import_state(store.cluster), current.version)])
        return current.value if current else None
