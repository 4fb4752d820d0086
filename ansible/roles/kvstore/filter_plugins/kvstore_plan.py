"""Filters that turn the inventory's Redis instances into kvstore-admin commands (what is missing only).

    groups['redis'] | kvstore_redis_groups(hostvars)       -> the groups the inventory wants
    wanted | kvstore_group_plan(existing)                   -> kvstore-admin commands to get there

``existing`` is ``kvstore-admin group list --json``. A node counts as present when it is in its
group at all, as master or replica: after a failover the inventory's master is a replica, and
that is not something to undo.
"""

from __future__ import annotations

import re
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def redis_groups(hosts: list[str], hostvars: Any) -> dict[str, Any]:
    """{"groups": {gid: {"master": addr, "replicas": [addr...]}}, "errors": [...]} from every host's redis_instances."""
    groups: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    seen: dict[str, str] = {}
    for host in hosts:
        hv = hostvars[host]
        address = hv.get("redis_address") or hv.get("ansible_host") or host
        for inst in hv.get("redis_instances") or []:
            gid = str(inst.get("group", ""))
            role = inst.get("role")
            node = f"{address}:{int(inst['port'])}"
            if not NAME.match(gid):
                errors.append(f"{host}: instance {node} has a bad group name {gid!r}")
                continue
            if role not in ("master", "replica"):
                errors.append(f"{host}: instance {node} has role {role!r}, not master or replica")
                continue
            if node in seen:
                errors.append(f"{node} is listed twice ({seen[node]} and {host})")
                continue
            seen[node] = host
            group = groups.setdefault(gid, {"master": None, "replicas": []})
            if role == "master":
                if group["master"] is not None:
                    errors.append(f"group {gid} has two masters: {group['master']} and {node}")
                    continue
                group["master"] = node
            else:
                group["replicas"].append(node)
    for gid, group in groups.items():
        if group["master"] is None:
            errors.append(f"group {gid} has no master in the inventory")
    return {"groups": dict(sorted(groups.items())), "errors": errors}


def group_plan(wanted: dict[str, Any], existing: list[dict[str, Any]], tls: bool = False) -> dict[str, Any]:
    """The kvstore-admin commands (argv after the global options) that add what ``wanted`` lacks
    (groups whose nodes speak TLS with ``tls``).

    Never removes anything; reports what the cluster has beyond the inventory instead.
    """
    errors = list(wanted.get("errors", []))
    by_id = {g["id"]: g for g in existing}
    owner = {node: g["id"] for g in existing for node in [g["master"], *g.get("replicas", [])]}
    actions: list[dict[str, Any]] = []
    for gid, group in wanted.get("groups", {}).items():
        nodes = [group["master"], *group["replicas"]]
        elsewhere = [n for n in nodes if n in owner and owner[n] != gid]
        for n in elsewhere:
            errors.append(f"{n} is in group {owner[n]} in ZooKeeper but in group {gid} in the inventory")
        if elsewhere:
            continue
        if gid not in by_id:
            argv = ["group", "add", "--id", gid, "--master", group["master"], *(["--tls"] if tls else [])]
            for r in group["replicas"]:
                argv += ["--replica", r]
            actions.append({"argv": argv, "description": f"add group {gid}"})
            continue
        for n in nodes:
            if n not in owner:
                actions.append({"argv": ["group", "add-replica", gid, n],
                                "description": f"add replica {n} to group {gid}"})
    inventory_nodes = {n for g in wanted.get("groups", {}).values() for n in [g["master"], *g["replicas"]]}
    extra_nodes = {n: gid for n, gid in owner.items() if n not in inventory_nodes}
    unmanaged = sorted(gid for gid in by_id if gid not in wanted.get("groups", {}))
    return {"actions": actions, "errors": errors, "extra_nodes": extra_nodes, "unmanaged_groups": unmanaged}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"kvstore_redis_groups": redis_groups, "kvstore_group_plan": group_plan}
