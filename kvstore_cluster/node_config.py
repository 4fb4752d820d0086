"""The ``config`` znode: Redis parameters set cluster-wide with CONFIG SET, and which ones may be.

A client's ``CONFIG SET`` through a proxy applies a *data-path tunable* (encodings, eviction,
keyspace notifications, lazy freeing, the slow log, ``hz``...) to every node of every group and
keeps it here, so a node or a group added later, or a node restarted from an older config file,
gets it too (``kvstore-admin group add``, and the sentinel leader's periodic check,
:func:`apply`). Parameters that would break the cluster (addresses, files, replication,
passwords, persistence, Redis Cluster's own) are refused with the reason; anything else is
refused as not being a tunable the proxy knows to be safe everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvstore_cluster import codec
from kvstore_cluster.codec import ModelError

_WHAT = "config"

# Applied to every node of every group and kept in ZooKeeper.
TUNABLES = frozenset({
    # encodings
    "hash-max-listpack-entries", "hash-max-listpack-value", "hash-max-ziplist-entries", "hash-max-ziplist-value",
    "list-max-listpack-size", "list-max-ziplist-size", "list-compress-depth", "set-max-intset-entries",
    "zset-max-listpack-entries", "zset-max-listpack-value", "zset-max-ziplist-entries", "zset-max-ziplist-value",
    "hll-sparse-max-bytes", "stream-node-max-bytes", "stream-node-max-entries",
    # eviction and expiry
    "maxmemory", "maxmemory-policy", "maxmemory-samples", "maxmemory-eviction-tenacity", "lfu-log-factor",
    "lfu-decay-time", "active-expire-effort",
    # lazy freeing
    "lazyfree-lazy-eviction", "lazyfree-lazy-expire", "lazyfree-lazy-server-del", "lazyfree-lazy-user-del",
    "lazyfree-lazy-user-flush", "replica-lazy-flush",
    # events, diagnostics, background work
    "notify-keyspace-events", "slowlog-log-slower-than", "slowlog-max-len", "latency-monitor-threshold",
    "latency-tracking", "latency-tracking-info-percentiles", "hz", "dynamic-hz", "activerehashing",
    "activedefrag", "active-defrag-cycle-min", "active-defrag-cycle-max", "active-defrag-ignore-bytes",
    "active-defrag-threshold-lower", "active-defrag-threshold-upper", "active-defrag-max-scan-fields",
    "lua-time-limit", "busy-reply-threshold", "tracking-table-max-keys", "acllog-max-len",
    "client-query-buffer-limit", "proto-max-bulk-len", "loglevel",
})  # fmt: skip

_BREAKS = "it would break the cluster"
# Refused with the reason (a prefix ends with '-*').
REFUSED: Mapping[str, str] = {
    **dict.fromkeys(["port", "bind", "bind-source-addr", "unixsocket", "unixsocketperm", "tls-port", "protected-mode",
                     "tcp-backlog"], f"{_BREAKS}: the proxies and sentinels reach each node at its address"),
    **dict.fromkeys(["dir", "dbfilename", "appendfilename", "appenddirname", "logfile", "pidfile", "aclfile",
                     "daemonize", "supervised"], "it is about one node's files and process: set it on the node"),
    **dict.fromkeys(["replicaof", "slaveof", "masterauth", "masteruser", "replica-read-only", "slave-read-only",
                     "replica-priority", "slave-priority", "replica-announced", "replica-announce-ip",
                     "replica-announce-port", "slave-announce-ip", "slave-announce-port", "replica-serve-stale-data",
                     "slave-serve-stale-data", "repl-*"],
                    f"{_BREAKS}: replication is managed by kvstore-sentinel and kvstore-admin"),
    **dict.fromkeys(["min-replicas-to-write", "min-replicas-max-lag", "min-slaves-to-write", "min-slaves-max-lag"],
                    f"{_BREAKS}: a master refusing writes for lack of replicas blocks failovers and reshards"),
    "requirepass": f"{_BREAKS}: the proxies, sentinels and the admin authenticate with the cluster's "
                   "--redis-password (docs/deploy.md)",
    "cluster-*": "kvstore is not a Redis Cluster: its proxies route keys themselves",
    **dict.fromkeys(["save", "appendonly", "appendfsync", "no-appendfsync-on-rewrite", "auto-aof-rewrite-*",
                     "aof-*", "rdb*", "stop-writes-on-bgsave-error"],
                    "persistence is part of a group's deployment (docs/contracts.md): set it on the nodes"),
    **dict.fromkeys(["timeout", "maxclients", "tcp-keepalive", "client-output-buffer-limit", "maxmemory-clients"],
                    f"{_BREAKS}: it limits or closes the proxies' own connections to the node"),
    **dict.fromkeys(["tls-*", "enable-*", "io-threads", "io-threads-do-reads", "databases", "rename-command",
                     "oom-score-adj", "oom-score-adj-values", "shutdown-*", "crash-*", "jemalloc-bg-thread",
                     "set-proc-title", "proc-title-template", "disable-thp", "ignore-warnings", "syslog-*",
                     "*_cpulist", "propagation-error-behavior", "sanitize-dump-payload", "socket-mark-id",
                     "acl-pubsub-default"], "it is about one node's process or security: set it on the node"),
}  # fmt: skip

def _matches(name: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return name.endswith(pattern[1:])
    return name == pattern


def refusal(name: str) -> str | None:
    """Why ``CONFIG SET name`` is refused cluster-wide, or None if it is a tunable applied everywhere."""
    name = name.lower()
    if name in TUNABLES:
        return None
    for pattern, why in REFUSED.items():
        if _matches(name, pattern):
            return why
    return "only data-path tunables (encodings, eviction, notifications, lazy freeing, slow log, hz...) are set " \
           "cluster-wide; this one is not known to be safe on every node"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """The parameters set cluster-wide: name (lowercase) -> value, as CONFIG SET takes them."""

    params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.params.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise ModelError(f"{_WHAT}: parameters and values are strings")
            if name != name.lower() or refusal(name) is not None:
                raise ModelError(f"{_WHAT}: {name!r} is not a parameter set cluster-wide")

    def with_params(self, params: Mapping[str, str]) -> NodeConfig:
        return NodeConfig({**self.params, **{k.lower(): v for k, v in params.items()}})

    def encode(self) -> bytes:
        return codec.dump_object({"params": dict(sorted(self.params.items()))})

    @classmethod
    def decode(cls, raw: bytes | str) -> NodeConfig:
        obj = codec.load_object(raw, _WHAT)
        params = codec.field(obj, "params", dict, _WHAT)
        return cls(dict(params))

    def to_json(self) -> dict[str, Any]:
        return dict(self.params)


def differing(values: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str]:
    """The parameters of ``wanted`` whose value differs from ``values`` (a node's CONFIG GET)."""
    return {k: v for k, v in wanted.items() if values.get(k) != v}


def as_dict(reply: Any) -> dict[str, str]:
    """A CONFIG GET reply (RESP2 flat array or RESP3 map, as hiredis parses them) as a dict of text."""
    if isinstance(reply, dict):
        pairs = list(reply.items())
    elif isinstance(reply, list):
        pairs = list(zip(reply[::2], reply[1::2], strict=False))
    else:
        raise ValueError(f"not a CONFIG GET reply: {str(reply)[:60]!r}")
    return {_text(k): _text(v) for k, v in pairs}


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


async def apply(node: Any, config: NodeConfig) -> dict[str, str]:
    """Set on ``node`` (a kvstore_cluster.node.Node) the parameters of ``config`` it does not have; what it set."""
    if not config.params:
        return {}
    have = as_dict(await node.call("CONFIG", "GET", *config.params, what="CONFIG GET"))
    todo = differing(have, config.params)
    if todo:
        await node.call("CONFIG", "SET", *(x for kv in todo.items() for x in kv), what="CONFIG SET")
    return todo
