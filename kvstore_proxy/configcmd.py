"""CONFIG answered for the cluster (docs/commands.md, "CONFIG"): the groups' masters are asked, every node is set.

- ``CONFIG GET``: every group's master; the first group's values are the answer, and a parameter
  whose value differs between groups is logged (``config_differs``; ``kvstore-admin check`` flags it).
- ``CONFIG SET``: only data-path tunables (kvstore_cluster/node_config.py says which and why the
  others are refused). Set on every group's master ahead of the client's next requests, then on
  their replicas, then kept in the ``config`` znode so nodes and groups added later get them.
- ``CONFIG RESETSTAT`` / ``REWRITE``: every node of every group (RESETSTAT also resets this proxy
  worker's command and error statistics).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import hiredis
import structlog

from kvstore_cluster.node import Node, NodeError
from kvstore_cluster.node_config import TUNABLES, as_dict, refusal
from kvstore_cluster.store import StoreError
from kvstore_proxy import resp
from kvstore_proxy.datapath import CommandStat
from kvstore_proxy.inspection import answer_later
from kvstore_proxy.scripting import broadcast

if TYPE_CHECKING:
    from kvstore_proxy.server import Worker
    from kvstore_proxy.session import Session

log = structlog.get_logger("kvstore.proxy.config")

_PERSIST_TRIES = 5


def _errors(results: list[Any]) -> list[str]:
    return [str(r) for r in results if isinstance(r, hiredis.ReplyError)]


def _config_get(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    worker = s.worker

    def merge(results: list[Any]) -> bytes:
        errors = _errors(results)
        if errors:
            return resp.error(errors[0])
        values = [as_dict(r) for r in results]
        _note_differences(worker, values)
        first = values[0]
        return s.enc.map([(resp.bulk(k.encode()), resp.bulk(v.encode())) for k, v in first.items()])

    return broadcast(s, args, stat, t0, merge)


def _note_differences(worker: Worker, values: list[dict[str, str]]) -> None:
    groups = [g.id for g in worker.router.groups] if worker.router.groups is not None else []
    for name in values[0]:
        seen = tuple(v.get(name) for v in values)
        if name not in TUNABLES or len(set(seen)) < 2:
            continue
        if worker.config_differences.get(name) != seen:
            worker.config_differences[name] = seen
            log.warning("config_differs", parameter=name, values=dict(zip(groups, seen, strict=False)),
                        hint="CONFIG SET through a proxy sets it on every node; 'kvstore-admin check' lists these")


def _config_set(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> bytes | None:
    if len(args) < 4 or len(args) % 2:
        return resp.error("ERR wrong number of arguments for 'config|set' command")
    params: dict[str, str] = {}
    for i in range(2, len(args), 2):
        name = args[i].decode(errors="replace").lower()
        why = refusal(name)
        if why is not None:
            return resp.error(f"ERR CONFIG SET {name} refused by kvstore-proxy: {why}")
        if name in params:
            return resp.error(f"ERR Duplicate parameter - {name}")
        params[name] = args[i + 1].decode(errors="surrogateescape")
    worker = s.worker

    def merge(results: list[Any]) -> bytes:
        errors = _errors(results)
        if errors:
            return resp.error(errors[0])
        _background(worker, _after_set(worker, params))
        return resp.OK

    return broadcast(s, args, stat, t0, merge)


async def _after_set(worker: Worker, params: dict[str, str]) -> None:
    """The replicas, then the record (with each value as the masters report it: 100mb is 104857600)."""
    groups = worker.router.groups
    if groups is None:
        return
    flat = [x for kv in params.items() for x in kv]
    reported: dict[str, str] = {}
    for g in groups:
        for address in (g.master, *g.replicas):
            try:
                async with Node(address, worker.config.timeout, worker.config.backend_password) as node:
                    if address != g.master:
                        await node.call("CONFIG", "SET", *flat, what="CONFIG SET")
                    elif not reported:
                        reported = as_dict(await node.call("CONFIG", "GET", *params, what="CONFIG GET"))
            except NodeError as exc:
                log.warning("config_not_set", node=address, group=g.id, params=params, error=str(exc),
                            consequence="the sentinel leader sets it once the node answers")
    await worker.loop.run_in_executor(None, _persist, worker, {k: reported.get(k, v) for k, v in params.items()})


def _persist(worker: Worker, params: dict[str, str]) -> None:
    topology = worker.topology
    if topology is None:
        return
    store = topology.store
    for _ in range(_PERSIST_TRIES):
        read = store.read_node_config()
        try:
            store.write_node_config(read.value.with_params(params), read.version)
        except StoreError:  # changed (or created) by another proxy meanwhile: read again
            continue
        log.info("config_kept", params=params)
        return
    log.error("config_not_kept", params=params, reason="the record kept changing")


def _every_node(s: Session, args: list[bytes], stat: CommandStat, t0: float) -> None:
    """CONFIG RESETSTAT / REWRITE on every node of every group: OK, or the first node's refusal."""
    worker = s.worker
    if args[1].lower() == b"resetstat":
        for st in worker.commandstats.values():
            st.calls, st.usec, st.errors = 0, 0.0, 0
        worker.stats.errors.clear()

    async def work() -> bytes:
        groups = worker.router.groups
        addresses = [a for g in groups for a in (g.master, *g.replicas)] if groups is not None else []

        async def one(address: str) -> str | None:
            try:
                async with Node(address, worker.config.timeout, worker.config.backend_password) as node:
                    await node.call(*args, what=" ".join(a.decode(errors="replace") for a in args[:2]))
            except NodeError as exc:
                return str(exc)
            return None

        failures = [f for f in await asyncio.gather(*(one(a) for a in addresses)) if f is not None]
        return resp.error(f"ERR {failures[0]}") if failures else resp.OK

    answer_later(s, stat, args, t0, work())


def _background(worker: Worker, work: Coroutine[Any, Any, None]) -> None:
    task = worker.loop.create_task(work)
    worker.tasks.add(task)

    def done(t: asyncio.Task[None]) -> None:
        worker.tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("config_follow_up_failed", error=str(t.exception()))

    task.add_done_callback(done)


HANDLERS: dict[bytes, Any] = {
    b"config|get": _config_get, b"config|set": _config_set,
    b"config|resetstat": _every_node, b"config|rewrite": _every_node,
}
