"""The routing table: slot -> backend (or a refusal), rebuilt from each groups/slots version; fencing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from kvstore_cluster.keyrules import KeyRules
from kvstore_cluster.model import Groups, SlotTable
from kvstore_cluster.slots import SLOT_COUNT, Slotter
from kvstore_proxy import resp
from kvstore_proxy.backend import Backend, Refuser
from kvstore_proxy.clientstate import Step
from kvstore_proxy.datapath import Outbox, SlotMap
from kvstore_proxy.migrating import Migrating, redispatch, released
from kvstore_proxy.rulehold import Change, RuleHub, install, release

log = structlog.get_logger("kvstore.proxy.router")

_PING = resp.command([b"PING"])
FENCED_ERROR = resp.error(
    "TRYAGAIN kvstore-proxy is cut off from ZooKeeper and its routing may be stale; retry shortly")
NO_TABLE_ERROR = resp.error("TRYAGAIN kvstore-proxy has not read the cluster tables yet; retry shortly")


def _resolver(future: asyncio.Future[None]) -> Callable[[bytes], None]:
    def resolve(_reply: bytes) -> None:
        if not future.done():
            future.set_result(None)
    return resolve


class Router:
    """Owns the backends of the current masters, ``slot_backend`` (slot -> entry; the compiled path
    reads it as ``slot_map``, rebuilt whenever a new table is assigned: never change one in place)
    and ``slotter`` (the cluster's slot function with its key rules, which the compiled path calls).

    Every entry of ``slot_backend`` answers ``up``/``send``/``refuse``: a :class:`Backend`, or a
    :class:`Refuser` for slots nobody may serve right now (unowned, group down, proxy fenced), so
    the hot path never checks those cases itself.

    Migrating slots (docs/design.md, "Resharding") get a :class:`Migrating` entry,
    which runs MIGRATE on the source before forwarding to the target (``migrating.py``).
    """

    def __init__(self, outbox: Outbox, backend_password: str | None = None, connect_timeout: float = 2.0):
        self.outbox = outbox
        self.backend_password = backend_password
        self.connect_timeout = connect_timeout
        self.groups: Groups | None = None
        self.slots: SlotTable | None = None
        self.groups_version = -1
        self.slots_version = -1
        self.backends: dict[str, Backend] = {}
        self.retired: list[Backend] = []
        self.fenced = False
        self.fence_reason = ""
        self._fence = Refuser(FENCED_ERROR, outbox)
        self._no_table = Refuser(NO_TABLE_ERROR, outbox)
        self.slot_backend: list[Any] = [self._no_table] * SLOT_COUNT
        self.slotter = Slotter()  # no key rules
        self.keyrules = KeyRules()  # the keyrules record applied (set_keyrules)
        self.keyrules_version = -1
        self.hubs: frozenset[int] = frozenset()  # slots whose keys may move in the rule change in progress
        self.rule_change: Change | None = None
        self.rule_hubs: dict[int, RuleHub] = {}  # their table entries (rulehold.py)
        self.owners: tuple[str | None, ...] = (None,) * SLOT_COUNT
        self.group_order: list[Any] = []  # one entry per group, for fan-out commands
        self.reshard_data: bytes | None = None  # the reshard znode, for holding newly marked slots
        self.migration_released = True
        self.migrating: list[Migrating] = []  # the Migrating entries of the table (kept across table changes)
        self.held_bytes = 0  # requests held by them (migrating.py bounds it)
        # Read by --metrics-listen (metrics.py); counted on the migrating slots' path only.
        self.migrations_on_access = 0  # takes (MIGRATE) sent for a request's keys
        self.keys_migrated_on_access = 0  # keys those takes moved (or found gone)
        self.migration_tryagain = 0  # requests answered TRYAGAIN after being held too long (or too many held)
        self.requests_held = 0  # requests made to wait (not refused) for a held slot or a key in pieces
        # Called after every change of the table (never per request): clients holding leases follow it.
        self.listeners: list[Callable[[], None]] = []
        # What each new backend connection sends first (function libraries: scripting.preload).
        self.preload: Callable[[Backend], list[tuple[Any, bytes]]] | None = None

    @property
    def slot_backend(self) -> list[Any]:
        return self._slot_backend

    @slot_backend.setter
    def slot_backend(self, table: list[Any]) -> None:
        self._slot_backend = table
        self.slot_map = SlotMap(table)

    # --- applying ZooKeeper's tables ----------------------------------------------------------

    def apply(self, groups: Groups, groups_version: int, slots: SlotTable, slots_version: int) -> None:
        """Switch to these tables: new masters get new backends.

        A group whose master changed fails the requests in flight on the old one at once, as
        of unknown outcome (``Backend.abandon``): the old master may still apply and acknowledge
        them, then be demoted and lose them. A group that left the table lets them finish.
        """
        self.groups, self.groups_version = groups, groups_version
        self.slots, self.slots_version = slots, slots_version
        wanted = {g.id: g.master for g in groups}
        for gid, backend in list(self.backends.items()):
            if wanted.get(gid) != backend.address:
                del self.backends[gid]
                pending = len(backend.fifo) + len(backend.resp3.fifo)
                if gid in wanted:
                    backend.abandon("master changed")
                else:
                    backend.retire()
                    if backend.state != "closed":
                        self.retired.append(backend)
                log.info("backend_retired", group=gid, addr=backend.address, pending=pending,
                         master_changed=gid in wanted)
        for gid, master in wanted.items():
            if gid not in self.backends:
                b = Backend(gid, master, self.outbox, self.backend_password, self.connect_timeout)
                b.preload = self.preload
                self.backends[gid] = b
                b.start()
        self.retired = [b for b in self.retired if b.state != "closed"]
        self.owners = slots.owners()
        self.migration_released = released(self.reshard_data, slots.migrating)
        if self.rule_change is not None:
            self.rule_change = Change(self.keyrules, self.owners)
        self._rebuild()

    def set_keyrules(self, record: KeyRules, version: int) -> None:
        """Route by these key rules from now on (``slotter``); during a change, hold its keys (rulehold.py)."""
        self.slotter, self.hubs = record.routing()
        self.keyrules, self.keyrules_version = record, version
        self.rule_change = Change(record, self.owners) if record.change is not None else None
        self._rebuild()

    def set_reshard(self, data: bytes | None) -> None:
        """The reshard znode changed: may keys of migrating slots move yet? (``migrating.py``)."""
        self.reshard_data = data
        self.migration_released = released(data, self.slots.migrating if self.slots is not None else ())
        self._resume_held()
        self._changed()

    def _resume_held(self) -> None:
        for entry in self.migrating:
            if self.migration_released or entry.committed:
                for e in (entry, entry.resp3):
                    if e.waiting:
                        e.resume()

    def entry_drained(self, entry: Migrating) -> None:
        """A committed entry has no take in flight any more: its slots go to their owner directly."""
        if entry in self.migrating and not self.fenced:
            self._rebuild()

    def _rebuild(self) -> None:
        if self.fenced:
            self.slot_backend = [self._fence] * SLOT_COUNT
            self.group_order = [self._fence] * max(1, len(self.groups or ()))
            fenced, self.migrating = self.migrating, []
            for old in fenced:  # what they held is refused like everything else now
                for e in (old, old.resp3):
                    redispatch(self, e.evict(), e.is_resp3)
            hubs, self.rule_hubs = list(self.rule_hubs.values()), {}
            release(self, hubs)
            self._changed()
            return
        if self.groups is None:
            return
        table: dict[str | None, Any] = {None: Refuser(resp.error("CLUSTERDOWN Hash slot not served"), self.outbox)}
        order = []
        for g in self.groups:
            if g.state == "down":
                entry: Any = Refuser(resp.error(f"CLUSTERDOWN group {g.id} is down"), self.outbox)
            else:
                entry = self.backends[g.id]
            table[g.id] = entry
            order.append(entry)
        unknown = table[None]
        slot_backend = [table.get(o, unknown) for o in self.owners]
        before: list[Migrating] = self.migrating
        kept: list[Migrating] = []
        for m in self.slots.migrating if self.slots is not None else ():
            source, target = table.get(m.source), table.get(m.target)
            if isinstance(source, Backend) and isinstance(target, Backend):
                # The same migration between the same backends keeps its entry: what it learnt
                # (keys gone, keys busy) and the requests it holds stay in order.
                same = [e for e in before if e.same(m, source, target)]
                entry = same[0] if same else Migrating(self, m, source, target)
                kept.append(entry)
            else:  # either side down: nobody can tell where a key of these slots is
                entry = source if not isinstance(source, Backend) else target
            slot_backend[m.lo : m.hi + 1] = [entry] * (m.hi - m.lo + 1)
        gone = []
        for old in before:
            if old in kept:
                continue
            m = old.migration
            if (old.busy or old.resp3.busy) and all(x is old.target for x in slot_backend[m.lo: m.hi + 1]):
                # Committed while takes are in flight: until they are answered, commands on their
                # keys must follow them through the source rather than overtake them to the target.
                old.committed = old.resp3.committed = True
                slot_backend[m.lo: m.hi + 1] = [old] * m.size
                kept.append(old)
            else:
                gone.append(old)
        before_hubs = self.rule_hubs
        self.rule_hubs = install(self, slot_backend, before_hubs)
        self.slot_backend = slot_backend
        self.group_order = order
        self.migrating = kept
        for old in gone:  # their held requests go where the new table says
            for e in (old, old.resp3):
                redispatch(self, e.evict(), e.is_resp3)
        release(self, [h for s, h in before_hubs.items() if self.rule_hubs.get(s) is not h])
        self._resume_held()
        self._changed()

    def _changed(self) -> None:
        for listener in self.listeners:
            listener()

    # --- fencing --------------------------------------------------------------------------------

    def fence(self, reason: str) -> None:
        if not self.fenced:
            self.fenced = True
            self.fence_reason = reason
            log.warning("proxy_fenced", reason=reason)
            self._rebuild()

    def unfence(self) -> None:
        if self.fenced:
            self.fenced = False
            self.fence_reason = ""
            log.warning("proxy_unfenced", slots_version=self.slots_version, groups_version=self.groups_version)
            self._rebuild()

    # --- lookups for the slow paths -------------------------------------------------------------

    def any_backend(self) -> Any:
        """Where static commands go (COMMAND INFO, HELP): the first group up (fenced: a refusal)."""
        if self.fenced:
            return self._fence
        for entry in self.group_order:
            if entry.up:
                return entry
        return self.group_order[0] if self.group_order else self._no_table

    def all_backends(self) -> list[Any]:
        return [self._fence] if self.fenced and not self.group_order else self.group_order

    def owns(self, group_index: int, slot: int) -> bool:
        """True if the group at ``group_index`` of ``group_order`` serves ``slot`` (owner or target)."""
        groups = self.groups
        if groups is None or group_index >= len(groups):
            return False
        gid = groups.groups[group_index].id
        if self.owners[slot] == gid:
            return True
        if self.slots is not None and self.slots.migrating:
            m = self.slots.migration_of(slot)
            return m is not None and m.target == gid
        return False

    async def drained(self, timeout: float) -> None:
        """Return once every request sent to a backend before now has been answered (or failed).

        The proxy registers a slots version only after this: past a reshard barrier, no request
        routed by the old table can still reach a source after the key mover started reading it.
        """
        loop = asyncio.get_running_loop()
        waits = []
        for b in [*self.backends.values(), *self.retired]:
            for conn in {b, b.resp3}:
                if conn.fifo and conn.up:
                    done: asyncio.Future[None] = loop.create_future()
                    conn.send(Step(_resolver(done)), _PING)
                    waits.append(done)
        if waits:
            await asyncio.wait(waits, timeout=timeout)

    def close(self) -> None:
        for b in [*self.backends.values(), *self.retired]:
            b.close()
        self.backends.clear()
        self.retired.clear()

    def describe(self) -> list[dict[str, Any]]:
        return [b.describe() for b in [*self.backends.values(), *self.retired]]
