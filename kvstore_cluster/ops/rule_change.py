"""Changing the key rules on a cluster that holds keys: hold the keys that move, move them, commit.

The protocol (docs/design.md, "Key rules")::

    record change {rules: new} in keyrules ─► barrier: every proxy registered that version
        (each holds requests on keys whose group changes, and sent everything routed before)
    ─► move: SCAN each group for the changed prefixes, MIGRATE each key whose group changes
    ─► commit: rules = new, change cleared (one transaction) ─► barrier: every proxy routes by them

While the change is recorded no proxy writes a moving key anywhere, so the keys found by the SCAN
are all of them and a key is never in two places; held requests run on the new group after the
commit. Every step is idempotent and the record says where it is, so a change interrupted
anywhere is finished by running the executor again (``kvstore-admin keyrule resume``). A rule
change and a reshard exclude each other (:func:`no_rule_change`, :func:`_no_reshard`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from kvstore_cluster import paths
from kvstore_cluster.keyrules import KeyRule, KeyRules, RuleChange, normalized, show
from kvstore_cluster.model import ModelError
from kvstore_cluster.node import Node, NodeError
from kvstore_cluster.ops import mover
from kvstore_cluster.ops.barrier import BarrierTimeout, wait_for_proxies
from kvstore_cluster.ops.context import crash_point
from kvstore_cluster.ops.errors import OpError
from kvstore_cluster.ops.fence import NO_FENCE, Fence
from kvstore_cluster.proxy_registration import KEYRULES, PROTOCOLS
from kvstore_cluster.store import ClusterStore, Create, Delete, Op, Set, Versioned

log = structlog.get_logger("kvstore.ops.rule_change")

RESUME_HINT = "run 'kvstore-admin keyrule resume'"


class RuleChangeInProgress(OpError):
    """Another rule change is recorded; it must be finished first."""


class RuleChangeStopped(OpError):
    """The change stopped part-way; it is recorded, so it can be resumed."""


@dataclass(frozen=True, slots=True)
class Options:
    timeout: float = 30.0  # seconds to wait for the proxies at each barrier
    password: str | None = field(default=None, repr=False)  # the Redis nodes' (--redis-password)


@dataclass
class Result:
    changed: bool = False  # False: the rules already were what was asked
    rules: tuple[KeyRule, ...] = ()  # the rules in force at the end
    keys: int = 0  # keys moved by this run
    big_keys: int = 0
    seconds: float = 0.0
    warning: str | None = None  # committed, but some proxy had not applied the new rules yet

    def to_json(self) -> dict[str, Any]:
        return {"changed": self.changed, "rules": [r.to_json() for r in self.rules], "keys_moved": self.keys,
                "big_keys_moved": self.big_keys, "seconds": round(self.seconds, 3), "warning": self.warning}


# --- planning --------------------------------------------------------------------------------------------


def added(current: tuple[KeyRule, ...], tag: bytes, prefixes: list[bytes]) -> tuple[KeyRule, ...]:
    """``current`` with each prefix mapped to ``tag`` (a prefix already there gets the new tag)."""
    rules = {r.prefix: r.tag for r in current}
    rules.update(dict.fromkeys(prefixes, tag))
    return normalized(KeyRule(p, t) for p, t in rules.items())


def removed(current: tuple[KeyRule, ...], prefixes: list[bytes]) -> tuple[KeyRule, ...]:
    """``current`` without the prefixes; a prefix that is not a rule is an error."""
    known = {r.prefix for r in current}
    unknown = [p for p in prefixes if p not in known]
    if unknown:
        raise ModelError(f"no key rule for prefix {', '.join(repr(show(p)) for p in unknown)} "
                         "('kvstore-admin keyrule list' shows them)")
    gone = set(prefixes)
    return tuple(r for r in current if r.prefix not in gone)


# --- starting --------------------------------------------------------------------------------------------


def _no_reshard(store: ClusterStore) -> list[Op]:
    # Creating and deleting the znode in one transaction: the transaction fails if a reshard was
    # recorded meanwhile (NodeExists), and leaves nothing behind otherwise.
    path = paths.reshard(store.cluster)
    return [Create(path, b""), Delete(path)]


def no_rule_change(store: ClusterStore) -> list[Op]:
    """Raise if a rule change is recorded; else transaction ops that fail if one gets recorded meanwhile.

    For operations that move keys by slot (a reshard): a rule change moves keys between slots.
    """
    current = store.read_keyrules()
    if current.value.change is not None:
        raise RuleChangeInProgress(
            f"a key rule change is in progress ({current.value.change.request}); {RESUME_HINT} first")
    path = paths.keyrules(store.cluster)
    if current.version < 0:
        return [Create(path, b""), Delete(path)]
    return [Set(path, current.value.encode(), current.version)]


def _check_proxies(store: ClusterStore, what: str) -> None:
    proxies = store.proxies()
    if proxies.malformed:
        pid, error = sorted(proxies.malformed.items())[0]
        raise RuleChangeStopped(f"the registration of proxy {pid} is unreadable ({error}); a proxy that cannot be "
                                f"checked may not hold the keys of a rule change: fix or stop it, then {what}")
    old = sorted(pid for pid, reg in proxies.items.items() if not reg.speaks(KEYRULES))
    if old:
        raise RuleChangeStopped(
            f"proxies {', '.join(old)} do not route by key rules (no '{KEYRULES}' protocol >= {PROTOCOLS[KEYRULES]} "
            f"in their registration); upgrade or stop them, then {what}")


def start(store: ClusterStore, rules: tuple[KeyRule, ...], request: str,
          fence: Fence = NO_FENCE) -> Versioned[KeyRules] | None:
    """Record a change to ``rules`` (``None``: they are the rules already). Nothing moves yet."""
    current = store.read_keyrules()
    if current.value.change is not None:
        raise RuleChangeInProgress(
            f"a key rule change is in progress ({current.value.change.request}); {RESUME_HINT} first")
    rules = normalized(rules)
    if rules == current.value.rules:
        return None
    if store.read_reshard() is not None:
        raise OpError("a reshard is in progress; key rules change once it is done "
                      "('kvstore-admin reshard --resume' or '--abort')")
    slots = store.read_slots()
    if slots.value.migrating:
        raise OpError("slots are marked migrating; key rules change once no slot is")
    _check_proxies(store, "try again")
    record = KeyRules(current.value.rules, RuleChange(rules, request))
    fence.check()
    store.commit([store.keyrules_op(record, current.version), *_no_reshard(store), *fence.zk_checks()])
    log.info("rule_change_started", request=request, rules=len(rules))
    return Versioned(record, current.version + 1 if current.version >= 0 else 0)


# --- running ---------------------------------------------------------------------------------------------


def run(store: ClusterStore, options: Options, fence: Fence = NO_FENCE,
        report: Callable[[int], None] | None = None) -> Result:
    """Finish the rule change recorded (if any): barrier, move, commit, barrier."""
    began = time.monotonic()
    result = Result()
    current = store.read_keyrules()
    record = current.value
    if record.change is None:
        result.rules = record.rules
        return result
    _check_proxies(store, RESUME_HINT)
    try:
        wait_for_proxies(store, lambda reg: reg.keyrules_version, current.version, options.timeout, "key rules",
                         fence)
    except BarrierTimeout as exc:
        raise RuleChangeStopped(f"{exc}. The change is recorded and its keys are held: fix or stop those proxies "
                                f"(a stopped proxy's node goes away with its ZooKeeper session), then "
                                f"{RESUME_HINT}") from None
    crash_point("rules-held")
    progress = mover.Progress()
    try:
        asyncio.run(_move(store, record, options, fence, progress, report))
    finally:
        result.keys, result.big_keys = progress.keys, progress.big_keys
    crash_point("rules-moved")
    done = KeyRules(record.change.rules)
    fence.check()
    store.commit([Set(paths.keyrules(store.cluster), done.encode(), current.version), *fence.zk_checks()])
    log.info("rule_change_committed", request=record.change.request, keys=result.keys)
    result.changed = True
    result.rules = done.rules
    try:
        wait_for_proxies(store, lambda reg: reg.keyrules_version, current.version + 1, options.timeout,
                         "key rules", fence)
    except BarrierTimeout as exc:
        # Committed: the keys are where the new rules put them. A proxy still holding them
        # answers -TRYAGAIN until it applies the commit.
        result.warning = str(exc)
    result.seconds = time.monotonic() - began
    return result


async def _move(store: ClusterStore, record: KeyRules, options: Options, fence: Fence, progress: mover.Progress,
                report: Callable[[int], None] | None) -> None:
    """Every key whose group changes, from the group owning its old slot to the one owning its new slot."""
    assert record.change is not None
    groups = store.read_groups().value
    slots = store.read_slots().value
    owners = slots.owners()
    old, new = record.slotter(), record.target_slotter()
    prefixes = record.changed_prefixes()
    masters = {g.id: g.master for g in groups}
    down = {g.id: g.state for g in groups if g.state != "ok"}

    def target_of(gid: str) -> Callable[[bytes], str | None]:
        def target(key: bytes) -> str | None:
            was, now = owners[old.key_slot(key)], owners[new.key_slot(key)]
            if was != gid or now == gid or now is None:
                return None  # not ours (a key of a slot this group does not own stays for 'check'), or staying
            if now in down or now not in masters:
                raise RuleChangeStopped(f"group {now} is {down.get(now, 'gone')}; keys of the change must move "
                                        f"there: {RESUME_HINT} once it is ok")
            return masters[now]
        return target

    def still_allowed() -> None:
        fence.check()

    tuning = mover.Tuning(password=options.password)
    ticker = asyncio.create_task(_tick(progress, report)) if report is not None else None
    try:
        jobs = [mover.move_listed(g.master, target_of(g.id), _matching(g.master, prefixes, options.password),
                                  tuning, progress, still_allowed)
                for g in groups if g.state == "ok"]
        results = await asyncio.gather(*jobs, return_exceptions=True)
    finally:
        if ticker is not None:
            ticker.cancel()
            report(progress.keys)  # type: ignore[misc]
    for r in results:
        if isinstance(r, mover.MoveError):  # its advice names the reshard's command
            raise RuleChangeStopped(str(r).replace(mover.RESUME_HINT, RESUME_HINT))
        if isinstance(r, NodeError):
            raise RuleChangeStopped(f"{r}; the change stopped, {RESUME_HINT} once the nodes answer")
        if isinstance(r, BaseException):
            raise r


async def _matching(address: str, prefixes: tuple[bytes, ...], password: str | None) -> AsyncIterator[list[bytes]]:
    async with Node(address, mover.SCAN_TIMEOUT, password) as node:
        for prefix in prefixes:
            async for keys in node.scan(mover.SCAN_COUNT, match=glob_escape(prefix) + b"*"):
                yield keys


async def _tick(progress: mover.Progress, report: Callable[[int], None]) -> None:
    while True:
        report(progress.keys)
        await asyncio.sleep(0.2)


def glob_escape(prefix: bytes) -> bytes:
    """``prefix`` as a literal in a Redis glob pattern (SCAN MATCH)."""
    out = bytearray()
    for c in prefix:
        if c in b"*?[]\\":
            out += b"\\"
        out.append(c)
    return bytes(out)
