"""Checks and commands on single Redis nodes (PING, replication role, REPLICAOF), always with short timeouts.

Every call takes the nodes' ``password`` (``--redis-password``); ``None`` for nodes without one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvstore_admin.errors import NodeError
from kvstore_cluster.model import parse_address
from kvstore_cluster.replication import CONFIG_REWRITE, replicaof_args, rewrite_error_matters

log = structlog.get_logger("kvstore.admin")

NODE_TIMEOUT = 1.0  # seconds for one command on a node that should answer at once
PASSWORD_HINT = "give the nodes' password with --redis-password or KVSTORE_REDIS_PASSWORD"


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


def client(address: str, timeout: float = NODE_TIMEOUT, password: str | None = None) -> redis.Redis:
    host, port = parse_address(address)
    # redis-py retries failed commands with backoff by default; a health check must not,
    # or a dead node costs several seconds instead of one timeout.
    return redis.Redis(
        host=host, port=port, password=password or None, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0), decode_responses=True,
    )


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def failure(address: str, what: str, exc: Exception, password: str | None = None) -> str:
    """``node A does not answer WHAT (reason)``, or, for a password problem, what to do about it."""
    if isinstance(exc, redis.AuthenticationError):
        text = _reason(exc)
        if not password:
            return f"node {address} requires a password ({PASSWORD_HINT})"
        if "without any password configured" in text or "no password is set" in text:
            return (f"node {address} has no password, but one was given (--redis-password or "
                    "KVSTORE_REDIS_PASSWORD); every node of the cluster must have the same one")
        return f"node {address} refused the password ({text})"
    return f"node {address} does not answer {what} ({_reason(exc)})"


def ping(address: str, timeout: float = NODE_TIMEOUT, password: str | None = None) -> None:
    """Raise ``NodeError`` unless ``address`` answers PING within ``timeout``."""
    conn = client(address, timeout, password)
    try:
        if not conn.ping():
            raise NodeError(f"node {address} does not answer PING")
    except redis.RedisError as exc:
        raise NodeError(failure(address, "PING", exc, password)) from None
    finally:
        conn.close()


def info(address: str, timeout: float = NODE_TIMEOUT, password: str | None = None) -> NodeInfo:
    """The node's replication role; ``NodeError`` if it does not answer."""
    conn = client(address, timeout, password)
    try:
        raw = conn.info("replication")
    except redis.RedisError as exc:
        raise NodeError(failure(address, "INFO", exc, password)) from None
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


def probe(address: str, timeout: float = NODE_TIMEOUT, password: str | None = None) -> dict[str, Any]:
    """Health of one node for ``status``: never raises, reports ``up`` and the role or the error."""
    try:
        found = info(address, timeout, password)
    except NodeError as exc:
        return {"address": address, "up": False, "error": str(exc)}
    return {"up": True, "error": None, **found.to_json()}


def set_replication(address: str, master: str | None, timeout: float = NODE_TIMEOUT,
                    password: str | None = None) -> None:
    """``REPLICAOF master`` (``None``: ``REPLICAOF NO ONE``), then ``CONFIG REWRITE`` so a restart keeps it.

    Raises ``NodeError`` if REPLICAOF fails; a failed rewrite is only logged (the role is in effect).
    """
    args = replicaof_args(master)
    conn = client(address, timeout, password)
    try:
        try:
            conn.execute_command(*args)
        except redis.RedisError as exc:
            if isinstance(exc, redis.AuthenticationError | redis.ConnectionError | redis.TimeoutError):
                raise NodeError(failure(address, " ".join(args), exc, password)) from None
            raise NodeError(f"{' '.join(args)} failed on {address} ({_reason(exc)})") from None
        try:
            conn.execute_command(*CONFIG_REWRITE)
        except redis.RedisError as exc:
            if rewrite_error_matters(exc):
                log.warning("config_rewrite_failed", node=address, error=_reason(exc),
                            consequence="a restart of the node brings back the replication in its config file")
    finally:
        conn.close()


def replicate(replica: str, master: str, timeout: float = 30.0, password: str | None = None) -> None:
    """Make ``replica`` a replica of ``master`` and wait until its link to the master is up.

    Redis answers REPLICAOF at once and syncs in the background, so success is only
    known from ``master_link_status:up``.
    """
    set_replication(replica, master, password=password)
    host, port = parse_address(master)
    deadline = time.monotonic() + timeout
    last: NodeInfo | str = "no answer yet"
    while True:
        try:
            last = info(replica, password=password)
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
