"""The checker: a recorded history against the final contents of every group -> a report of anomalies.

Categories (the columns of the fault table):

- **lost**: an acknowledged write that the cluster does not hold (a SET key missing, an appended
  value missing, a counter below its acknowledged increments or an INCR that returned no more
  than one acknowledged before it began, a register holding an older acknowledged value than the
  newest one, a queued element that nobody took and is not in its queue beyond what the pops of
  unknown outcome may have taken, an acknowledged pop undone: its element taken again or still
  queued).
- **unexpected**: what no acknowledged or unknown op can explain: a value never written (phantom),
  a definitely-failed write that was applied, an appended value present twice or out of order, a
  counter above acked + unknown increments, a read that saw a phantom or missed an acknowledged
  write that is still there in the end (a stale read), a transaction applied in part (a tag's two
  counters differ, or its EXEC returned two different values), a queued element twice in its
  queue.
- **misplaced**: a key in a group that does not own its slot (for a migrating slot, source and
  target are both allowed, not both at once).
- **diverged**: a replica that does not hold exactly its master's data once replication caught up.

Unknown ops are never lost and never unexpected, whether they show up or not. ``check`` is pure
(synthetic histories test it); ``read_final_state`` reads a real cluster.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from chaos.addresses import plain
from chaos.history import (
    FAILED,
    GET,
    GETC,
    GETR,
    INCR,
    LRANGE,
    MINCR,
    OK,
    QPOP,
    QPUSH,
    REG,
    RPUSH,
    SET,
    UNKNOWN,
    History,
    Op,
)
from kvstore_cluster.slots import SLOT_COUNT, key_slot

LOST, UNEXPECTED, MISPLACED, DIVERGED = "lost", "unexpected", "misplaced", "diverged"
CATEGORIES = (LOST, UNEXPECTED, MISPLACED, DIVERGED)


def slot_of(key: str) -> int:
    return key_slot(key.encode())


# --- what the checker reads ---------------------------------------------------------------------


@dataclass
class NodeData:
    """Every key of one redis-server: ``str`` for strings, ``list[str]`` for lists, ``("<type>",)`` else."""

    address: str
    keys: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # could not be read at all
    in_sync: bool = True  # a replica whose offset matched its master's before it was read


@dataclass
class GroupData:
    id: str
    state: str  # ok / failing_over / down
    master: NodeData
    replicas: list[NodeData] = field(default_factory=list)


@dataclass
class FinalState:
    groups: dict[str, GroupData]
    owners: tuple[str | None, ...]  # slot -> owning group id
    migrating: dict[int, tuple[str, str]] = field(default_factory=dict)  # slot -> (source, target)

    @classmethod
    def simple(cls, groups: dict[str, GroupData], owner_of: Any) -> FinalState:
        """Tests: ``owner_of(slot) -> group id`` for every slot."""
        return cls(groups, tuple(owner_of(s) for s in range(SLOT_COUNT)))


# --- what the checker reports -------------------------------------------------------------------


@dataclass
class Anomaly:
    category: str
    kind: str
    key: str
    detail: str = ""
    count: int = 1  # lost increments count as many
    slot: int | None = None
    group: str | None = None
    op: Op | None = None  # the write concerned, when there is one

    def __str__(self) -> str:
        where = f" [{self.group}]" if self.group else ""
        times = f" ({self.op.outcome} {self.op.start:.3f}-{self.op.end:.3f})" if self.op else ""
        return f"{self.category}/{self.kind} {self.key}{where}: {self.detail}{times}"


@dataclass
class Report:
    anomalies: list[Anomaly] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # ops ok / failed / unknown
    keys: int = 0  # keys the cluster serves

    def add(self, category: str, kind: str, key: str, detail: str = "", count: int = 1,
            op: Op | None = None, group: str | None = None) -> None:
        self.anomalies.append(Anomaly(category, kind, key, detail, count, slot_of(key), group, op))

    def of(self, category: str) -> list[Anomaly]:
        return [a for a in self.anomalies if a.category == category]

    def total(self, category: str) -> int:
        return sum(a.count for a in self.of(category))

    def kinds(self, category: str) -> set[str]:
        return {a.kind for a in self.of(category)}

    def summary(self, limit: int = 12) -> str:
        head = ", ".join(f"{c} {self.total(c)}" for c in CATEGORIES)
        lines = [head] + [f"  {a}" for a in self.anomalies[:limit]]
        if len(self.anomalies) > limit:
            lines.append(f"  ... {len(self.anomalies) - limit} more")
        return "\n".join(lines)


# --- the check ----------------------------------------------------------------------------------


def served_view(state: FinalState, report: Report) -> dict[str, Any]:
    """What the cluster serves: each key from the group that owns its slot; others are misplaced."""
    view: dict[str, Any] = {}
    where: dict[str, str] = {}
    for gid, group in state.groups.items():
        if group.state == "down":
            continue  # a down group's node serves nothing (cache mode); its keys are not the cluster's
        if group.master.error:
            report.add(DIVERGED, "master_unreadable", gid, group.master.error, group=gid)
            continue
        for key, value in group.master.keys.items():
            slot = slot_of(key)
            allowed = {state.owners[slot]}
            if slot in state.migrating:
                allowed |= set(state.migrating[slot])
            if gid not in allowed:
                report.add(MISPLACED, "wrong_group", key, f"in {gid}, slot {slot} owned by {state.owners[slot]}",
                           group=gid)
                continue
            if key in view:
                report.add(MISPLACED, "two_groups", key, f"in {where[key]} and {gid} (slot {slot} migrating)",
                           group=gid)
                continue
            view[key] = value
            where[key] = gid
    return view


def _by_key(ops: list[Op], kind: str) -> dict[str, list[Op]]:
    out: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind == kind:
            out[op.key].append(op)
    return out


def check(history: History, state: FinalState) -> Report:
    """Every anomaly of ``history`` against ``state`` (see the module docstring)."""
    report = Report(counts=history.counts())
    view = served_view(state, report)
    report.keys = len(view)
    ops = list(history)
    lost_keys: set[str] = set()  # keys with a lost write: their stale reads are that loss, seen early
    lost_values: set[tuple[str, str]] = set()

    # SET S:<client>:<seq>: written once each.
    sets = {op.key: op for op in ops if op.kind == SET}
    for key, op in sets.items():
        present = view.get(key)
        if op.outcome == OK and present is None:
            report.add(LOST, "set_lost", key, "acknowledged SET missing", op=op)
            lost_keys.add(key)
        elif present is not None and op.outcome == FAILED:
            report.add(UNEXPECTED, "failed_write_applied", key, f"SET failed ({op.error}) but key holds it", op=op)
        elif present is not None and present != op.value:
            report.add(UNEXPECTED, "wrong_value", key, f"holds {present!r}, wrote {op.value!r}", op=op)

    # RPUSH L:<n>: each value appended once.
    appends = _by_key(ops, RPUSH)
    for key in set(appends) | {k for k in view if k.startswith("L:")}:
        final = view.get(key)
        if final is not None and not isinstance(final, list):
            report.add(UNEXPECTED, "wrong_type", key, f"holds {final!r}, not a list")
            continue
        final = final or []
        by_value = {op.value: op for op in appends.get(key, [])}
        seen: dict[str, int] = {}
        for pos, value in enumerate(final):
            writer = by_value.get(value)
            if writer is None:
                report.add(UNEXPECTED, "phantom_value", key, f"{value!r} was never appended")
            elif writer.outcome == FAILED:
                report.add(UNEXPECTED, "failed_write_applied", key, f"{value!r} appended by a failed RPUSH",
                           op=writer)
            if value in seen:
                report.add(UNEXPECTED, "duplicate_value", key, f"{value!r} at {seen[value]} and {pos}", op=writer)
            else:
                seen[value] = pos
        last_pos: dict[int, tuple[int, Op]] = {}
        for op in sorted(appends.get(key, []), key=lambda o: o.id):
            if op.outcome != OK:
                continue
            if op.value not in seen:
                report.add(LOST, "append_lost", key, f"acknowledged {op.value!r} missing", op=op)
                lost_keys.add(key)
                lost_values.add((key, op.value or ""))
                continue
            prev = last_pos.get(op.client)
            if prev is not None and seen[op.value] < prev[0]:
                report.add(UNEXPECTED, "reordered", key,
                           f"{op.value!r} before {prev[1].value!r}, appended after it by the same client", op=op)
            last_pos[op.client] = (seen[op.value], op)

    # INCR C:<n>: final within [acked, acked + unknown].
    incrs = _by_key(ops, INCR)
    counter_lost: set[str] = set()
    for key in set(incrs) | {k for k in view if k.startswith("C:")}:
        acked = sum(op.outcome == OK for op in incrs.get(key, []))
        unknown = sum(op.outcome == UNKNOWN for op in incrs.get(key, []))
        raw = view.get(key)
        try:
            final = int(raw) if raw is not None else 0
        except (TypeError, ValueError):
            report.add(UNEXPECTED, "wrong_type", key, f"counter holds {raw!r}")
            continue
        if final < acked:
            report.add(LOST, "counter_skipped", key, f"{final} < {acked} acknowledged increments",
                       count=acked - final)
            counter_lost.add(key)
        elif final > acked + unknown:
            report.add(UNEXPECTED, "counter_repeated", key,
                       f"{final} > {acked} acknowledged + {unknown} unknown increments",
                       count=final - acked - unknown)

    # SET R:<n>: the final value comes from a write that nothing acknowledged later supersedes.
    regs = _by_key(ops, REG)
    for key in set(regs) | {k for k in view if k.startswith("R:")}:
        writes = regs.get(key, [])
        by_value = {op.value: op for op in writes}
        acked_sets = [w for w in writes if w.outcome == OK]
        final = view.get(key)
        if final is None:
            if acked_sets:
                report.add(LOST, "register_lost", key, f"empty after {len(acked_sets)} acknowledged SETs",
                           op=max(acked_sets, key=lambda o: o.end))
                lost_keys.add(key)
            continue
        source = by_value.get(final)
        if source is None:
            report.add(UNEXPECTED, "phantom_value", key, f"holds {final!r}, never written")
        elif source.outcome == FAILED:
            report.add(UNEXPECTED, "failed_write_applied", key, f"holds {final!r} from a failed SET", op=source)
        elif source.outcome == OK:
            newer = [w for w in acked_sets if w.start > source.end]
            if newer:
                latest = max(newer, key=lambda o: o.end)
                report.add(LOST, "register_stale", key,
                           f"holds {final!r} but {latest.value!r} was acknowledged after it", op=latest)
                lost_keys.add(key)

    _check_transactions(ops, view, report)
    _check_queues(ops, view, report)

    # Keys no op could have written.
    for key in view:
        if (key[:2] not in ("S:", "L:", "C:", "R:", "Q:") and not key.startswith("{T:")) \
                or (key.startswith("S:") and key not in sets):
            report.add(UNEXPECTED, "phantom_key", key, "key never written")

    _check_reads(ops, sets, appends, incrs, regs, lost_keys | counter_lost, lost_values, report)
    _check_replicas(state, report)
    return report


def _check_transactions(ops: list[Op], view: dict[str, Any], report: Report) -> None:
    """MULTI/EXEC of a tag's two counters: all or nothing, each counter like an INCR counter."""
    by_tag = _by_key(ops, MINCR)
    tags = set(by_tag) | {k[1:].split("}", 1)[0] for k in view if k.startswith("{T:")}
    for tag in tags:
        group = by_tag.get(tag, [])
        acked = sum(op.outcome == OK for op in group)
        unknown = sum(op.outcome == UNKNOWN for op in group)
        finals = []
        for half in ("a", "b"):
            raw = view.get(f"{{{tag}}}{half}")
            try:
                finals.append(int(raw) if raw is not None else 0)
            except (TypeError, ValueError):
                report.add(UNEXPECTED, "wrong_type", f"{{{tag}}}{half}", f"counter holds {raw!r}")
        if len(finals) < 2:
            continue
        a, b = finals
        key = f"{{{tag}}}a"
        if a != b:
            report.add(UNEXPECTED, "transaction_partial", key, f"{tag}: a={a}, b={b} (incremented together)")
        if min(a, b) < acked:
            report.add(LOST, "transaction_lost", key, f"{min(a, b)} < {acked} acknowledged transactions",
                       count=acked - min(a, b))
        elif max(a, b) > acked + unknown:
            report.add(UNEXPECTED, "transaction_repeated", key,
                       f"{max(a, b)} > {acked} acknowledged + {unknown} unknown transactions")
        for op in group:
            if op.outcome == OK and (not isinstance(op.result, list) or len(op.result) != 2
                                     or op.result[0] != op.result[1]):
                report.add(UNEXPECTED, "transaction_not_atomic", key, f"EXEC returned {op.result!r}", op=op)


def _check_queues(ops: list[Op], view: dict[str, Any], report: Report) -> None:
    """LPUSH/BRPOP queues: every element pushed is taken once, or still queued, or a pop of unknown
    outcome may have taken it; nothing appears that was not pushed."""
    pushes, pops = _by_key(ops, QPUSH), _by_key(ops, QPOP)
    for key in set(pushes) | set(pops) | {k for k in view if k.startswith("Q:")}:
        final = view.get(key)
        if final is not None and not isinstance(final, list):
            report.add(UNEXPECTED, "wrong_type", key, f"holds {final!r}, not a list")
            continue
        final = final or []
        pushed = {op.value: op for op in pushes.get(key, [])}
        taken: dict[str, list[Op]] = defaultdict(list)
        for op in sorted(pops.get(key, []), key=lambda o: o.end):
            if op.outcome == OK and op.result is not None:
                taken[op.result].append(op)
        queued: dict[str, int] = defaultdict(int)
        for value in final:
            queued[value] += 1
        for value in set(taken) | set(queued):
            writer = pushed.get(value)
            if writer is None:
                report.add(UNEXPECTED, "phantom_value", key, f"{value!r} was never pushed")
            elif writer.outcome == FAILED:
                report.add(UNEXPECTED, "failed_write_applied", key, f"{value!r} pushed by a failed LPUSH", op=writer)
            if queued[value] > 1:
                report.add(UNEXPECTED, "duplicate_value", key, f"{value!r} {queued[value]} times in the queue")
            takers = taken.get(value, [])
            if len(takers) + min(queued[value], 1) > 1:
                # Taken, then taken again or still queued: the first pop's removal was undone.
                report.add(LOST, "pop_lost", key, f"{value!r} taken {len(takers)} times, queued {queued[value]}",
                           op=takers[0])
        missing = sorted((op for op in pushed.values()
                          if op.outcome == OK and op.value not in taken and op.value not in queued),
                         key=lambda o: o.start)
        # Each pop of unknown outcome may have taken one element pushed before it ended.
        for pop in sorted((p for p in pops.get(key, []) if p.outcome == UNKNOWN), key=lambda o: o.end):
            for i, push in enumerate(missing):
                if push.start < pop.end:
                    del missing[i]
                    break
        for push in missing:
            report.add(LOST, "element_lost", key, f"acknowledged {push.value!r} neither taken nor queued", op=push)


def _check_reads(ops: list[Op], sets: dict[str, Op], appends: dict[str, list[Op]], incrs: dict[str, list[Op]],
                 regs: dict[str, list[Op]], lost_keys: set[str], lost_values: set[tuple[str, str]],
                 report: Report) -> None:
    """Reads: nothing never written; no acknowledged write missed unless the end state lost it too."""
    # INCR replies are reads too: an increment that began after another was acknowledged must see more.
    for key, group in incrs.items():
        if key in lost_keys:
            continue
        acked = [o for o in group if o.outcome == OK and isinstance(o.result, int)]
        by_end = sorted(acked, key=lambda o: o.end)
        best: Op | None = None
        i = 0
        for inc in sorted(acked, key=lambda o: o.start):
            while i < len(by_end) and by_end[i].end < inc.start:
                if best is None or by_end[i].result > best.result:
                    best = by_end[i]
                i += 1
            if best is not None and inc.result <= best.result:
                # Even when the final value is in range (unknown increments made up for it), an
                # acknowledged increment went missing: lost, with the time of the one that went.
                report.add(LOST, "counter_went_back", key,
                           f"INCR returned {inc.result} after an earlier INCR had returned {best.result}", op=best)
    append_values = {key: {op.value: op for op in group} for key, group in appends.items()}
    reg_values = {key: {op.value: op for op in group} for key, group in regs.items()}
    for r in ops:
        if r.outcome != OK:
            continue
        if r.kind == GET:
            w = sets.get(r.key)
            if w is None:
                continue
            if r.result is None:
                if w.outcome == OK and w.end < r.start and r.key not in lost_keys:
                    report.add(UNEXPECTED, "stale_read", r.key, "GET missed an acknowledged SET", op=w)
            elif r.result != w.value:
                report.add(UNEXPECTED, "read_phantom", r.key, f"GET saw {r.result!r}, wrote {w.value!r}", op=w)
            elif w.outcome == FAILED:
                report.add(UNEXPECTED, "failed_write_applied", r.key, "GET saw the value of a failed SET", op=w)
        elif r.kind == LRANGE:
            values = append_values.get(r.key, {})
            got = set(r.result or [])
            for v in got:
                w = values.get(v)
                if w is None:
                    report.add(UNEXPECTED, "read_phantom", r.key, f"LRANGE saw {v!r}, never appended")
                elif w.outcome == FAILED:
                    report.add(UNEXPECTED, "failed_write_applied", r.key, f"LRANGE saw {v!r} of a failed RPUSH",
                               op=w)
            for v, w in values.items():
                if (w.outcome == OK and w.end < r.start and v not in got
                        and (r.key, v) not in lost_values and r.key not in lost_keys):
                    report.add(UNEXPECTED, "stale_read", r.key, f"LRANGE missed acknowledged {v!r}", op=w)
        elif r.kind == GETC:
            try:
                seen = int(r.result) if r.result is not None else 0
            except (TypeError, ValueError):
                report.add(UNEXPECTED, "read_phantom", r.key, f"counter read {r.result!r}")
                continue
            group = incrs.get(r.key, [])
            low = sum(1 for w in group if w.outcome == OK and w.end < r.start)
            high = sum(1 for w in group if w.outcome in (OK, UNKNOWN) and w.start < r.end)
            if seen < low and r.key not in lost_keys:
                report.add(UNEXPECTED, "stale_read", r.key, f"counter read {seen} < {low} acknowledged before")
            elif seen > high:
                report.add(UNEXPECTED, "read_phantom", r.key, f"counter read {seen} > {high} increments sent")
        elif r.kind == GETR and r.result is not None:
            w = reg_values.get(r.key, {}).get(r.result)
            if w is None:
                report.add(UNEXPECTED, "read_phantom", r.key, f"GET saw {r.result!r}, never written")
            elif w.outcome == FAILED:
                report.add(UNEXPECTED, "failed_write_applied", r.key, f"GET saw {r.result!r} of a failed SET", op=w)


def _check_replicas(state: FinalState, report: Report) -> None:
    for gid, group in state.groups.items():
        if group.state == "down" or group.master.error:
            continue
        master = group.master.keys
        for rep in group.replicas:
            if rep.error:
                report.add(DIVERGED, "replica_unreadable", gid, f"{rep.address}: {rep.error}", group=gid)
                continue
            if not rep.in_sync:
                report.add(DIVERGED, "replica_behind", gid,
                           f"{rep.address} never caught up with {group.master.address}", group=gid)
                continue
            differ = [k for k in set(master) | set(rep.keys) if master.get(k) != rep.keys.get(k)]
            if differ or len(master) != len(rep.keys):
                sample = ", ".join(sorted(differ)[:5])
                report.add(DIVERGED, "replica_differs", gid,
                           f"{rep.address}: {len(differ)} keys differ from {group.master.address} "
                           f"(dbsize {len(rep.keys)} vs {len(master)}): {sample}", count=len(differ), group=gid)


# --- reading a real cluster ---------------------------------------------------------------------


def read_node(address: str, timeout: float = 20.0) -> NodeData:
    """SCAN every key of one node with its value (strings and lists; the type name otherwise)."""
    import redis

    host, _, port = plain(address).rpartition(":")
    client = redis.Redis(host=host, port=int(port), socket_timeout=timeout, protocol=2, decode_responses=True)
    node = NodeData(address)
    try:
        keys = list(dict.fromkeys(client.scan_iter(count=1000)))
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            pipe = client.pipeline(transaction=False)
            for k in chunk:
                pipe.type(k)
            types = pipe.execute()
            pipe = client.pipeline(transaction=False)
            fetch = []
            for k, t in zip(chunk, types, strict=True):
                if t == "string":
                    pipe.get(k)
                elif t == "list":
                    pipe.lrange(k, 0, -1)
                else:
                    continue
                fetch.append(k)
            for k, t in zip(chunk, types, strict=True):
                node.keys[k] = (t,)
            for k, v in zip(fetch, pipe.execute(), strict=True):
                if v is not None:
                    node.keys[k] = v
                else:
                    node.keys.pop(k, None)  # expired or deleted between SCAN and GET
    except redis.RedisError as exc:
        node.error = f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return node


def replication_caught_up(master: str, replica: str) -> bool:
    """True if ``replica`` follows ``master`` with its link up and the same offset as the master."""
    import redis

    def info(address: str) -> dict[str, Any]:
        host, _, port = plain(address).rpartition(":")
        c = redis.Redis(host=host, port=int(port), socket_timeout=3, protocol=2, decode_responses=True)
        try:
            return c.info("replication")
        finally:
            c.close()

    m, r = info(master), info(replica)
    if m.get("role") != "master" or r.get("role") != "slave" or r.get("master_link_status") != "up":
        return False
    if f"{r.get('master_host')}:{r.get('master_port')}" != master:
        return False
    return int(m["master_repl_offset"]) == int(r["slave_repl_offset"])


def read_final_state(store: Any, sync_timeout: float = 30.0) -> FinalState:
    """Read ``groups``/``slots`` from ZooKeeper, then every master and every listed replica.

    Each replica is read once its offset equals its master's (polled up to ``sync_timeout``);
    one that never gets there is reported as behind.
    """
    groups = store.read_groups().value
    slots = store.read_slots().value
    migrating = {}
    for m in slots.migrating:
        for s in range(m.lo, m.hi + 1):
            migrating[s] = (m.source, m.target)
    out: dict[str, GroupData] = {}
    deadline = time.monotonic() + sync_timeout
    for g in groups:
        data = GroupData(g.id, g.state, read_node(g.master))
        if g.state != "down":
            for rep in g.replicas:
                synced = False
                while True:
                    try:
                        synced = replication_caught_up(g.master, rep)
                    except Exception:  # noqa: BLE001 - a node still restarting answers later
                        synced = False
                    if synced or time.monotonic() >= deadline:
                        break
                    time.sleep(0.1)
                node = read_node(rep)
                node.in_sync = synced
                data.replicas.append(node)
        out[g.id] = data
    return FinalState(out, slots.owners(), migrating)
