"""Checks and commands on single Redis nodes (PING, replication role, REPLICAOF), always with short timeouts."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvstore_admin.errors import NodeError
from kvstore_cluster.model import parse_address

NODE_TIMEOUT = 1.0  # seconds for one command on a node that should answer at once


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What ``INFO replication`` says about a node."""

    address: str
    role: str  # "master" or "replica"
    master: str | None = None  # the master a replica follows
    link_up: bool | None = None  # a replica's master_link_status (None for a master)
    connected_replicas: int = 0
    offset: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def client(address: str, timeout: float = NODE_TIMEOUT) -> redis.Redis:
    host, port = parse_address(address)
    # redis-py retries failed commands with backoff by default; a health check must not,
    # or a dead node costs several seconds instead of one timeout.
    return redis.Redis(
        host=host, port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0), decode_responses=True,
    )


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def ping(address: str, timeout: float = NODE_TIMEOUT) -> None:
    """Raise ``NodeError`` unless ``address`` answers PING within ``timeout``."""
    conn = client(address, timeout)
    try:
        if not conn.ping():
            raise NodeError(f"node {address} does not answer PING")
    except redis.RedisError as exc:
        raise NodeError(f"node {address} does not answer PING ({_reason(exc)})") from None
    finally:
        conn.close()


def info(address: str, timeout: float = NODE_TIMEOUT) -> NodeInfo:
    """The node's replication role; ``NodeError`` if it does not answer."""
    conn = client(address, timeout)
    try:
        raw = conn.info("replication")
    except redis.RedisError as exc:
        raise NodeError(f"node {address} does not answer INFO ({_reason(exc)})") from None
    finally:
        conn.close()
    return _node_info(address, raw)


def _node_info(address: str, raw: dict[str, Any]) -> NodeInfo:
    if raw.get("role") == "slave":
        return NodeInfo(
            address=address,
            role="replica",
            master=f"{raw.get('master_host')}:{raw.get('master_port')}",
            link_up=raw.get("master_link_status") == "up",
            offset=int(raw.get("slave_repl_offset", 0) or 0),
        )
    return NodeInfo(
        address=address,
        role="master",
        connected_replicas=int(raw.get("connected_slaves", 0) or 0),
        offset=int(raw.get("master_repl_offset", 0) or 0),
    )


def probe(address: str, timeout: float = NODE_TIMEOUT) -> dict[str, Any]:
    """Health of one node for ``status``: never raises, reports ``up`` and the role or the error."""
    try:
        found = info(address, timeout)
    except NodeError as exc:
        return {"address": address, "up": False, "error": str(exc)}
    return {"up": True, "error": None, **found.to_json()}


def replicate(replica: str, master: str, timeout: float = 30.0) -> None:
    """Make ``replica`` a replica of ``master`` and wait until its link to the master is up.

    Redis answers REPLICAOF at once and syncs in the background, so success is only
    known from ``master_link_status:up``.
    """
    host, port = parse_address(master)
    conn = client(replica)
    try:
        conn.execute_command("REPLICAOF", host, port)
    except redis.RedisError as exc:
        conn.close()
        raise NodeError(f"REPLICAOF {master} failed on {replica} ({_reason(exc)})") from None
    try:
        # Best effort: keep the role across a restart when the node runs from a config file.
        conn.config_rewrite()
    except redis.RedisError:
        pass
    finally:
        conn.close()
    deadline = time.monotonic() + timeout
    last: NodeInfo | str = "no answer yet"
    while True:
        try:
            last = info(replica)
            if last.role == "replica" and last.master == f"{host}:{port}" and last.link_up:
                return
        except NodeError as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            state = last if isinstance(last, str) else f"role {last.role}, link {'up' if last.link_up else 'down'}"
            raise NodeError(
                f"replica {replica} did not reach master_link_status:up with {master} "
                f"within {timeout:g}s ({state})"
            )
        time.sleep(0.05)
