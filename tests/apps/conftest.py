"""One 3-group cluster and proxy for every application test (docs/apps.md): each adds its own key rules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from proxy.conftest import ProxyCluster, ProxyProcess, _make_cluster

from kvstore_admin.cli import cli
from kvstore_admin.processes import LocalProcess


class AppCluster:
    """The cluster, with kvstore-admin at hand and the proxy's URL for the applications."""

    def __init__(self, cluster: ProxyCluster):
        self.cluster = cluster
        assert cluster.proxy is not None
        self.proxy: ProxyProcess = cluster.proxy
        self.url = f"redis://127.0.0.1:{cluster.proxy.port}/0"

    def admin(self, *args: str) -> str:
        result = CliRunner().invoke(cli, ["--zk", self.cluster.zk_hosts, "--cluster", self.cluster.name, *args],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    def rules(self, tag: str, *prefixes: str) -> None:
        """``kvstore-admin keyrule add --tag TAG PREFIX...``, as docs/apps.md says for the application."""
        self.admin("keyrule", "add", "--tag", tag, *prefixes)

    def check(self) -> None:
        """Every key the application wrote is in the group its slot (under the rules) belongs to."""
        self.admin("check")


@pytest.fixture(scope="package")
def apps(zookeeper: LocalProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppCluster]:
    base = tmp_path_factory.mktemp("apps")
    cluster, cleanup = _make_cluster(zookeeper, base, 3)
    try:
        cluster.proxy = ProxyProcess(cluster.zk_hosts, cluster.name, base / "proxy.log")
        yield AppCluster(cluster)
    finally:
        cleanup()
