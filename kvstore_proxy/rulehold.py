"""A key rule change in progress (docs/design.md, "Key rules"): hold the requests of the keys that move.

While the ``keyrules`` record carries a change, the router routes with
``KeyRules.routing()``: every key whose group changes lands in one of a few *hub* slots, whose
table entry is a :class:`RuleHub`. Other slots are untouched, so requests elsewhere cost nothing
more. Per request on a hub slot::

    keys ── none changes group (old rules' owner == new rules' owner) ──► the slot's own entry
         └─ one does ──► held here until the change is committed (the executor moves the keys
                         meanwhile), then sent where the new rules put them

A held request is answered ``-TRYAGAIN`` after ``HOLD_SECONDS`` (nothing ran) or when its keys
end up in different groups (a multi-key request spanning them now: the client's retry is split
by the new rules). Held requests of a worker count against the same bound as a reshard's.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import structlog

from kvstore_cluster.keyrules import KeyRules
from kvstore_proxy import resp
from kvstore_proxy.datapath import notify
from kvstore_proxy.migrating import HOLD_MAX_BYTES, HOLD_SECONDS, Held, request_keys

log = structlog.get_logger("kvstore.proxy.rulehold")

HELD_ERROR = resp.error("TRYAGAIN key is moving to another group after a key rule change; retry shortly")
SPLIT_ERROR = resp.error("TRYAGAIN the keys of this request are in different groups since a key rule change; "
                         "retry it")
TICK = 0.05  # seconds between looks at the held requests' deadlines


class Change:
    """What every hub of one change shares: the old and new slot functions, the slot owners."""

    __slots__ = ("record", "old", "new", "owners")

    def __init__(self, record: KeyRules, owners: tuple[str | None, ...]):
        self.record = record
        self.old = record.slotter()
        self.new = record.target_slotter()
        self.owners = owners

    def moves(self, key: bytes) -> bool:
        """Does the change take ``key`` to another group?"""
        owners = self.owners
        return owners[self.old.key_slot(key)] != owners[self.new.key_slot(key)]


class RuleHub:
    """The slot table entry of one hub slot during a rule change; ``base`` is what the slot has otherwise."""

    __slots__ = ("router", "change", "slot", "base", "held", "timer", "resp3", "is_resp3", "evicted")
    up = False  # the compiled path hands every request to send()

    def __init__(self, router: Any, change: Change, slot: int, base: Any, twin_of: RuleHub | None = None):
        self.router = router
        self.change = change
        self.slot = slot
        self.base = base
        self.held: deque[Held] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.evicted = False
        # RESP3 sessions use the twin, whose requests go to the base's RESP3 twin.
        self.is_resp3 = twin_of is not None
        self.resp3: RuleHub = self if twin_of is not None else RuleHub(router, change, slot, base.resp3, self)

    @property
    def error(self) -> bytes:
        """What a lease-based command (transaction, blocking) gets for keys that move: wait and retry."""
        return HELD_ERROR

    def rebase(self, base: Any) -> None:
        """The slot's own entry changed (a failover): requests of keys that do not move go there now."""
        self.base = base
        self.resp3.base = base.resp3

    def settle(self, keys: list[bytes]) -> Any:
        """``base`` if none of ``keys`` moves, else this hub (which holds or refuses them)."""
        moves = self.change.moves
        return self if any(moves(k) for k in keys) else self.base

    # --- the request path -----------------------------------------------------------------------

    def refuse(self, r: Any) -> None:
        self.send(r, resp.command(r.args))

    def send(self, r: Any, raw: bytes) -> None:
        keys = request_keys(r, raw)
        if self.evicted:
            _redispatch(self.router, [Held(r, raw, keys, 0.0)], self.is_resp3)
            return
        moves = self.change.moves
        if not any(moves(k) for k in keys):
            self.base.send(r, raw)
            return
        router = self.router
        if router.held_bytes + len(raw) > HOLD_MAX_BYTES:
            _answer(r, HELD_ERROR, router)
            return
        router.held_bytes += len(raw)
        router.requests_held += 1
        self.held.append(Held(r, raw, keys, time.monotonic() + HOLD_SECONDS))
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(TICK, self._tick)

    def _tick(self) -> None:
        self.timer = None
        now = time.monotonic()
        if self.held and self.held[0].deadline <= now:
            kept: deque[Held] = deque()
            for h in self.held:
                if h.deadline <= now:
                    self.router.held_bytes -= len(h.raw)
                    _answer(h.r, HELD_ERROR, self.router)
                else:
                    kept.append(h)
            self.held = kept
        if self.held:
            self.timer = asyncio.get_running_loop().call_later(TICK, self._tick)

    def evict(self) -> list[Held]:
        """This hub left the table (the change is committed, or the router fenced): its held requests."""
        self.evicted = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        held = list(self.held)
        self.held.clear()
        for h in held:
            self.router.held_bytes -= len(h.raw)
        return held


def unhub(entry: Any) -> Any:
    """The entry a hub stands in for (leases and channels follow the slot's owner); others as they are."""
    return entry.base if isinstance(entry, RuleHub) else entry


def install(router: Any, table: list[Any], before: dict[int, RuleHub]) -> dict[int, RuleHub]:
    """Put the hubs of the router's rule change into ``table``; returns them (kept from ``before``
    when the change is the same, so what they hold stays in order). Hubs no longer wanted send
    what they held where the new table puts it."""
    change = router.rule_change
    hubs: dict[int, RuleHub] = {}
    if change is not None and not router.fenced:
        for slot in router.hubs:
            hub = before.get(slot)
            if hub is not None and hub.change.record == change.record and not hub.evicted:
                hub.change = hub.resp3.change = change  # the owners may have changed
                hub.rebase(table[slot])
            else:
                hub = RuleHub(router, change, slot, table[slot])
            hubs[slot] = hub
            table[slot] = hub
    return hubs


def release(router: Any, gone: list[RuleHub]) -> None:
    """Hubs that left the table: what they held goes where the table (just installed) serves it now."""
    for hub in gone:
        for h in (hub, hub.resp3):
            _redispatch(router, h.evict(), h.is_resp3)


def _redispatch(router: Any, held: list[Held], resp3: bool) -> None:
    slot = router.slotter.key_slot
    table = router.slot_backend
    for h in held:
        entries = {id(e): e for e in (table[slot(k)] for k in h.keys)} if h.keys else {}
        if len(entries) != 1:
            _answer(h.r, SPLIT_ERROR if entries else HELD_ERROR, router)
            continue
        entry = next(iter(entries.values()))
        if resp3:
            entry = getattr(entry, "resp3", None)
            if entry is None:
                _answer(h.r, HELD_ERROR, router)
                continue
        entry.send(h.r, h.raw)


def _answer(r: Any, err: bytes, router: Any) -> None:
    router.migration_tryagain += 1
    done = r.fail(err)
    if done is not None:
        notify(done, router.outbox)
