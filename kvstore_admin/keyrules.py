"""``kvstore-admin keyrule add/remove/list/resume``: the key rules (kvstore_cluster.keyrules) and changing them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from kvstore_admin.errors import RULES_STOPPED, USER_ERROR
from kvstore_cluster.keyrules import KeyRule, show
from kvstore_cluster.ops import rule_change
from kvstore_cluster.store import ClusterStore

EXIT_CODES_HELP = f"""\b
Key rule exit codes (besides the ones of every command):
  {USER_ERROR}  bad request, or a rule change or a reshard is in progress
  {RULES_STOPPED}  the change stopped part-way (a proxy did not apply it, a node failed); it is
      recorded and its keys are held by the proxies: fix the cause, then 'keyrule resume'
"""


def rule_json(rule: KeyRule) -> dict[str, Any]:
    return {"prefix": show(rule.prefix), "tag": show(rule.tag), "slot": rule.slot}


def list_rules(store: ClusterStore) -> dict[str, Any]:
    """The rules in force (each with the slot of its keys) and the change in progress, if any."""
    record = store.read_keyrules()
    change = record.value.change
    return {"rules": [rule_json(r) for r in record.value.rules], "version": record.version,
            "change": None if change is None else {"request": change.request, "started_at": change.started_at,
                                                   "rules": [rule_json(r) for r in change.rules]}}


def render_list(listed: dict[str, Any]) -> str:
    from kvstore_admin.status import table

    if not listed["rules"]:
        lines = ["no key rules: keys hash as in Redis Cluster (CRC16 of the key or of its {hash tag})"]
    else:
        lines = [table(["PREFIX", "TAG", "SLOT"], [[r["prefix"], r["tag"], r["slot"]] for r in listed["rules"]])]
    if listed["change"] is not None:
        lines.append(f"a change is in progress ({listed['change']['request']}): run 'kvstore-admin keyrule resume'")
    return "\n".join(lines)


def progress_line(enabled: bool) -> Callable[[int], None] | None:
    """Keys moved so far on one terminal line (None when stderr is not a terminal or --json)."""
    if not enabled or not sys.stderr.isatty():
        return None

    def report(keys: int) -> None:
        sys.stderr.write(f"\rmoving keys of the changed rules: {keys} moved")
        sys.stderr.flush()

    return report


def change(store: ClusterStore, rules: tuple[KeyRule, ...], request: str, options: rule_change.Options,
           report: Callable[[int], None] | None) -> dict[str, Any]:
    """Record the change to ``rules`` and carry it out (or say that nothing changes)."""
    started = rule_change.start(store, rules, request)
    if started is None:
        return {"changed": False, "rules": [rule_json(r) for r in rules], "keys_moved": 0, "request": request}
    return finish(store, options, report)


def finish(store: ClusterStore, options: rule_change.Options, report: Callable[[int], None] | None) -> dict[str, Any]:
    try:
        result = rule_change.run(store, options, report=report)
    finally:
        if report is not None:
            sys.stderr.write("\n")
    out = result.to_json()
    out["rules"] = [rule_json(r) for r in result.rules]
    return out


def render_result(out: dict[str, Any]) -> str:
    if not out["changed"]:
        return "nothing to change: " + ("the rules already are these" if out.get("request") else "no change recorded")
    text = f"key rules changed ({len(out['rules'])} rules); {out['keys_moved']} keys moved to their new group"
    if out.get("warning"):
        text += f"\nwarning: {out['warning']}; they hold the moved keys' requests until they apply it"
    return text
