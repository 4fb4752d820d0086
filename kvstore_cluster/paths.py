"""Pure builders for every ZooKeeper path of the kvstore layout (root ``/kvstore/<cluster>``)."""

from __future__ import annotations

import re

ROOT = "/kvstore"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a safe znode name, else raise ``ValueError``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"bad {kind} name {name!r}: use 1-64 letters, digits, '_', '.', '-' "
            "starting with a letter or digit"
        )
    return name


def cluster_root(cluster: str) -> str:
    return f"{ROOT}/{check_name('cluster', cluster)}"


def meta(cluster: str) -> str:
    return f"{cluster_root(cluster)}/meta"


def groups(cluster: str) -> str:
    return f"{cluster_root(cluster)}/groups"


def slots(cluster: str) -> str:
    return f"{cluster_root(cluster)}/slots"


def proxies(cluster: str) -> str:
    return f"{cluster_root(cluster)}/proxies"


def proxy(cluster: str, proxy_id: str) -> str:
    return f"{proxies(cluster)}/{check_name('proxy', proxy_id)}"


def sentinels(cluster: str) -> str:
    return f"{cluster_root(cluster)}/sentinels"


def sentinel(cluster: str, sentinel_id: str) -> str:
    return f"{sentinels(cluster)}/{check_name('sentinel', sentinel_id)}"


def sentinel_leader(cluster: str) -> str:
    return f"{cluster_root(cluster)}/sentinel-leader"


def failovers(cluster: str) -> str:
    return f"{cluster_root(cluster)}/failover"


def failover(cluster: str, group_id: str) -> str:
    return f"{failovers(cluster)}/{check_name('group', group_id)}"


def reshard(cluster: str) -> str:
    return f"{cluster_root(cluster)}/reshard"


def reshard_progress(cluster: str) -> str:
    """Ephemeral: the running executor's live progress (keys/s, ETA), gone with its session."""
    return f"{cluster_root(cluster)}/reshard-progress"


def options(cluster: str) -> str:
    """The cluster options record (``kvstore_cluster.options``); absent means every default."""
    return f"{cluster_root(cluster)}/options"


def keyrules(cluster: str) -> str:
    """The key rules and the rule change in progress (``kvstore_cluster.keyrules``); absent means no rules."""
    return f"{cluster_root(cluster)}/keyrules"


def node_config(cluster: str) -> str:
    """Redis parameters set cluster-wide with CONFIG SET (``kvstore_cluster.node_config``); absent: none."""
    return f"{cluster_root(cluster)}/config"


def scripts(cluster: str) -> str:
    """Parent of the script registry: one child per Lua script, named by its SHA1 (kvstore_cluster.scripts)."""
    return f"{cluster_root(cluster)}/scripts"


def script(cluster: str, sha: str) -> str:
    return f"{scripts(cluster)}/{check_name('script', sha)}"


def functions(cluster: str) -> str:
    """Parent of the function registry: one child per library, named by the library."""
    return f"{cluster_root(cluster)}/functions"


def function(cluster: str, library: str) -> str:
    return f"{functions(cluster)}/{check_name('function library', library)}"


def import_state(cluster: str) -> str:
    """The import from a standalone Redis in progress (or finished), written by ``kvstore-admin import``."""
    return f"{cluster_root(cluster)}/import"


def import_lock(cluster: str) -> str:
    """Ephemeral: held by the one ``kvstore-admin import`` process running."""
    return f"{cluster_root(cluster)}/import-running"


def access(cluster: str) -> str:
    """Who may change and who may read the cluster (``kvstore_cluster.zkauth.ZkAccess``); absent: open."""
    return f"{cluster_root(cluster)}/access"


def users(cluster: str) -> str:
    """The proxy's users and their rules (``kvstore_cluster.users.Users``); absent: no users but default."""
    return f"{cluster_root(cluster)}/users"


def containers(cluster: str) -> list[str]:
    """Persistent parent znodes created with the cluster."""
    return [proxies(cluster), sentinels(cluster), sentinel_leader(cluster), failovers(cluster), scripts(cluster),
            functions(cluster)]
