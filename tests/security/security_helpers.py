"""Helpers of the security tests: removing a secured cluster, certificates made with openssl."""

from __future__ import annotations

from kvstore_cluster.store import ClusterNotFound, ClusterStore, connect
from kvstore_cluster.zkauth import ZkCredentials


def remove_secured(zk_hosts: str, cluster: str, writer: ZkCredentials) -> None:
    """Delete ``cluster`` as its writer (an unauthenticated client, like the shared fixture's, may not)."""
    client = connect(zk_hosts, credentials=writer)
    try:
        ClusterStore(client, cluster).destroy()
    except ClusterNotFound:
        pass
    finally:
        client.stop()
        client.close()
