"""Cluster changes (init, group add/add-replica/remove-replica/remove) as plain functions on a ClusterStore.

Every change reads with versions and commits through ``ClusterStore.commit`` with those
versions checked, so a concurrent change makes it fail with ``VersionConflict``, writing nothing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

import structlog

from kvstore_admin.errors import NODE_FAILED, AdminError
from kvstore_cluster import node_config, paths, tls
from kvstore_cluster.model import Group, Groups, Meta, SlotTable, parse_address
from kvstore_cluster.node import NODE_TIMEOUT, Node, NodeError
from kvstore_cluster.node_config import NodeConfig
from kvstore_cluster.slots import format_slot_ranges
from kvstore_cluster.store import Check, ClusterStore, Set
from kvstore_cluster.zkauth import ZkAccess

log = structlog.get_logger("kvstore.admin")


def check_address(text: str, what: str = "node") -> str:
    """Return ``text`` if it is a valid ``HOST:PORT``, else an ``AdminError``."""
    try:
        parse_address(text)
    except ValueError as exc:
        raise AdminError(f"{what}: {exc}") from None
    return text


def init_cluster(store: ClusterStore, mode: str, access: ZkAccess | None = None) -> Meta:
    """Create an empty cluster (no groups, every slot unowned), secured by ``access`` if given."""
    meta = Meta(mode=mode, created_at=time.time())
    store.create(meta, Groups(), SlotTable(), access)
    log.info("cluster_created", cluster=store.cluster, mode=mode, secured=access is not None)
    return meta


def next_group_id(groups: Groups) -> str:
    """The first ``gN`` (N = 1, 2, ...) not in use."""
    taken = set(groups.ids())
    n = 1
    while f"g{n}" in taken:
        n += 1
    return f"g{n}"


def _check_free(groups: Groups, address: str, as_replica: bool) -> None:
    owner = groups.owner_of_node(address)
    if owner is None:
        return
    if as_replica and owner.master == address:
        raise AdminError(f"node {address} is the master of group {owner.id}; it cannot be a replica elsewhere")
    role = "master" if owner.master == address else "a replica"
    raise AdminError(f"node {address} is already {role} of group {owner.id}")


async def _check_live_master(address: str, password: str | None) -> None:
    async with Node(address, password=password) as node:
        found = await node.replication()
    if found.role != "master":
        raise AdminError(
            f"node {address} is a replica of {found.master}; a group's master must be a master "
            "(run REPLICAOF NO ONE on it first)"
        )


async def _check_live_replica(address: str, master: str, password: str | None) -> None:
    async with Node(address, password=password) as node:
        found = await node.replication()
    # REPLICAOF wipes the node's data: refuse a node that is itself somebody's master.
    if found.role == "master" and found.connected_replicas > 0:
        raise AdminError(
            f"node {address} is a master with {found.connected_replicas} replica(s) of its own; "
            "refusing to make it a replica of " + master
        )


async def _ping(address: str, password: str | None) -> None:
    async with Node(address, password=password) as node:
        await node.ping()


async def _replicate(replica: str, master: str, timeout: float, password: str | None) -> None:
    async with Node(replica, password=password) as node:
        await node.replicate(master, timeout)
    log.info("replication_configured", replica=replica, master=master)


async def _prepare_group(master: str, replicas: list[str], repl_timeout: float, password: str | None,
                         config: NodeConfig) -> None:
    """Every node answers, the master is a master, each replica may become one and then follows the master;
    each gets the parameters set cluster-wide (CONFIG SET through the proxies)."""
    for address in [master, *replicas]:
        await _ping(address, password)
    await _check_live_master(master, password)
    for r in replicas:
        await _check_live_replica(r, master, password)
    for r in replicas:
        await _replicate(r, master, repl_timeout, password)
    for address in [master, *replicas]:
        await _configure(address, config, password)


async def _configure(address: str, config: NodeConfig, password: str | None) -> None:
    async with Node(address, NODE_TIMEOUT, password) as node:
        try:
            done = await node_config.apply(node, config)
        except NodeError as exc:
            raise AdminError(f"node {address} refused the cluster's parameters ({exc}); nothing was added",
                             NODE_FAILED) from None
    if done:
        log.info("node_configured", node=address, params=done)


def add_group(store: ClusterStore, master: str, replicas: list[str], group_id: str | None = None,
              repl_timeout: float = 30.0, password: str | None = None, use_tls: bool = False) -> Group:
    """Add a group of live nodes (speaking TLS with ``use_tls``); its replicas are made to replicate its master first.

    The group owns no slot until ``rebalance`` (or a reshard) gives it some.
    """
    check_address(master, "master")
    for r in replicas:
        check_address(r, "replica")
    wanted = [master, *replicas]
    dupes = sorted({a for a in wanted if wanted.count(a) > 1})
    if dupes:
        raise AdminError(f"node {dupes[0]} is given twice")
    if group_id is not None:
        try:
            paths.check_name("group", group_id)
        except ValueError as exc:
            raise AdminError(str(exc)) from None
    meta = store.read_meta()
    groups = store.read_groups()
    gid = group_id or next_group_id(groups.value)
    if groups.value.get(gid) is not None:
        raise AdminError(f"group {gid} already exists")
    _check_free(groups.value, master, as_replica=False)
    for r in replicas:
        _check_free(groups.value, r, as_replica=True)
    if use_tls:
        tls.add_nodes(wanted)
    # Replication first, the ZooKeeper write last: a group appears in the cluster only once
    # its replicas really follow its master. A lost race afterwards leaves nothing in ZooKeeper.
    asyncio.run(_prepare_group(master, replicas, repl_timeout, password, store.read_node_config().value))
    group = Group(id=gid, master=master, replicas=tuple(replicas), tls=use_tls)
    store.commit([
        Check(paths.meta(store.cluster), meta.version),
        Set(paths.groups(store.cluster), groups.value.put(group).encode(), groups.version),
    ])
    log.info("group_added", group=gid, master=master, replicas=replicas)
    return group


def add_replica(store: ClusterStore, group_id: str, address: str, repl_timeout: float = 30.0,
                password: str | None = None) -> Group:
    """Add a live node to a group as a replica of its master (REPLICAOF, then the ZooKeeper write)."""
    check_address(address, "replica")
    groups = store.read_groups()
    group = _get_group(groups.value, group_id)
    if group.tls:
        tls.add_nodes([address])
    _check_free(groups.value, address, as_replica=True)
    asyncio.run(_prepare_replica(address, group.master, repl_timeout, password, store.read_node_config().value))
    updated = replace(group, replicas=(*group.replicas, address))
    store.set_groups(groups.value.put(updated), groups.version)
    log.info("replica_added", group=group_id, replica=address)
    return updated


async def _prepare_replica(address: str, master: str, repl_timeout: float, password: str | None,
                           config: NodeConfig) -> None:
    await _ping(address, password)
    await _check_live_replica(address, master, password)
    await _replicate(address, master, repl_timeout, password)
    await _configure(address, config, password)


async def _stop_replicating(address: str, timeout: float, password: str | None) -> None:
    async with Node(address, timeout, password) as node:
        await node.promote()


@dataclass(frozen=True, slots=True)
class RemovedReplica:
    group: Group  # as committed, without the replica
    stopped: bool  # the node answered and no longer replicates (REPLICAOF NO ONE)
    error: str | None = None  # why it could not be told to stop replicating


def remove_replica(store: ClusterStore, group_id: str, address: str, *, timeout: float = NODE_TIMEOUT,
                   password: str | None = None) -> RemovedReplica:
    """Take a replica out of its group (version-checked), then tell it to stop following the master.

    The ZooKeeper write comes first: while the node is listed, the sentinel points it back at
    the master. A node that does not answer is removed all the same (replacing a failed node is
    the usual reason); ``stopped`` is then False and ``error`` says why.
    """
    check_address(address, "replica")
    groups = store.read_groups()
    group = _get_group(groups.value, group_id)
    if address == group.master:
        raise AdminError(f"node {address} is the master of group {group_id}; use 'kvstore-admin failover "
                         f"{group_id}' first to make another node its master")
    if address not in group.replicas:
        owner = groups.value.owner_of_node(address)
        elsewhere = f"; it is in group {owner.id}" if owner is not None else ""
        raise AdminError(f"node {address} is not a replica of group {group_id} (replicas: "
                         f"{', '.join(group.replicas) or 'none'}){elsewhere}")
    if group.state == "failing_over":
        # The failover's last step rewrites the group from its nodes: let it finish first.
        raise AdminError(f"group {group_id} is failing over; remove the replica once it is done "
                         "('kvstore-admin status' shows it)")
    updated = replace(group, replicas=tuple(r for r in group.replicas if r != address))
    store.set_groups(groups.value.put(updated), groups.version)
    log.info("replica_removed", group=group_id, replica=address)
    try:
        asyncio.run(_stop_replicating(address, timeout, password))
    except NodeError as exc:
        log.info("removed_replica_unreachable", group=group_id, replica=address, error=str(exc))
        return RemovedReplica(updated, stopped=False, error=str(exc))
    return RemovedReplica(updated, stopped=True)


def remove_group(store: ClusterStore, group_id: str) -> Group:
    """Remove a group that owns no slot; its Redis nodes are left running and untouched."""
    groups = store.read_groups()
    slots = store.read_slots()
    group = _get_group(groups.value, group_id)
    owned = slots.value.counts().get(group_id, 0)
    if owned:
        raise AdminError(
            f"group {group_id} owns {owned} slots; move them to other groups first (reshard)"
        )
    if any(group_id in (m.source, m.target) for m in slots.value.migrating):
        raise AdminError(f"group {group_id} takes part in a slot migration; finish it first")
    # Checking the slots version too: a slot handed to this group meanwhile makes this fail.
    store.commit([
        Set(paths.groups(store.cluster), groups.value.without(group_id).encode(), groups.version),
        Check(paths.slots(store.cluster), slots.version),
    ])
    log.info("group_removed", group=group_id)
    return group


def _get_group(groups: Groups, group_id: str) -> Group:
    group = groups.get(group_id)
    if group is None:
        known = ", ".join(groups.ids()) or "none"
        raise AdminError(f"unknown group {group_id!r} (groups: {known})")
    return group


def list_groups(store: ClusterStore) -> list[dict[str, Any]]:
    """Every group with its slot count and ranges, for ``group list``."""
    groups = store.read_groups().value
    slots = store.read_slots().value
    counts = slots.counts()
    return [
        {
            **g.to_json(), "tls": g.tls,
            "slots": counts.get(g.id, 0),
            "ranges": format_slot_ranges(slots.ranges_of(g.id)),
        }
        for g in groups
    ]
