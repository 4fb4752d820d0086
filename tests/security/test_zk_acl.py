"""ZooKeeper ACLs against a real ZooKeeper: init --zk-auth, secure, the reader, and who is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from kazoo.exceptions import NoAuthError
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl_credential

from kvstore_admin.cli import cli
from kvstore_admin.errors import ACCESS_DENIED
from kvstore_cluster import paths
from kvstore_cluster.codec import ModelError
from kvstore_cluster.model import Group, Groups, SlotTable
from kvstore_cluster.store import ClusterStore, connect
from kvstore_cluster.zkauth import ZkAccess, ZkCredentials, connect_to_cluster, load_credentials

from .security_helpers import remove_secured

WRITER = "kvstore:s3cret-writer"
READER = "viewer:s3cret-reader"


def admin(zk_hosts: str, *args: str, auth: str | None = WRITER, cluster: str = "c1") -> Result:
    env = {"KVSTORE_ZK_AUTH": auth} if auth else {"KVSTORE_ZK_AUTH": ""}
    result = CliRunner().invoke(cli, ["--zk", zk_hosts, "--cluster", cluster, "--zk-timeout", "5", *args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def refused(result: Result, message: str) -> None:
    assert result.exit_code == ACCESS_DENIED, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr


@pytest.fixture(autouse=True)
def zk_hosts(zk_hosts: str) -> Iterator[str]:
    """The test's chroot; a secured cluster is removed as its writer (the shared fixture cannot)."""
    yield zk_hosts
    remove_secured(zk_hosts, "c1", ZkCredentials("kvstore", "s3cret-writer"))


@pytest.fixture
def secured(zk_hosts: str, tmp_path: Path) -> str:
    """A cluster made with init --zk-auth, a reader, and one group (written as the writer)."""
    reader_file = tmp_path / "reader"
    reader_file.write_text(READER + "\n")
    result = admin(zk_hosts, "init", "--mode", "cache", "--zk-auth", "--zk-reader-auth-file", str(reader_file))
    assert result.exit_code == 0, result.output
    assert "secured with ZooKeeper ACLs" in result.output
    client = connect_to_cluster(zk_hosts, "c1", ZkCredentials("kvstore", "s3cret-writer"))
    try:
        store = ClusterStore(client, "c1")
        groups = store.read_groups()
        store.set_groups(Groups((Group("g1", "127.0.0.1:7001"),)), groups.version)
    finally:
        client.stop()
        client.close()
    return zk_hosts


def test_unauthenticated_kazoo_client_cannot_change_a_slot_or_a_group(secured: str) -> None:
    client = connect(secured)
    try:
        for path in (paths.groups("c1"), paths.slots("c1"), paths.meta("c1"), paths.access("c1")):
            with pytest.raises(NoAuthError):
                client.get(path)
            with pytest.raises(NoAuthError):
                client.set(path, b"{}")
            with pytest.raises(NoAuthError):
                client.delete(path)
        with pytest.raises(NoAuthError):
            client.create(paths.failover("c1", "g1"), b"{}")
        with pytest.raises(NoAuthError):
            client.set_acls(paths.groups("c1"), list(OPEN_ACL_UNSAFE))
    finally:
        client.stop()
        client.close()
    # A wrong password is just another identity to ZooKeeper: refused the same way.
    wrong = connect(secured, credentials=ZkCredentials("kvstore", "guess"))
    try:
        with pytest.raises(NoAuthError):
            wrong.set(paths.slots("c1"), SlotTable().encode())
    finally:
        wrong.stop()
        wrong.close()
    groups = json.loads(admin(secured, "group", "list", "--json").stdout)
    assert [g["id"] for g in groups] == ["g1"]  # nothing changed


def test_missing_or_wrong_credentials_get_one_clear_error(secured: str) -> None:
    refused(admin(secured, "group", "list", auth=None), "no credentials were given")
    refused(admin(secured, "group", "list", auth="kvstore:wrong"), "for user 'kvstore': wrong user or password")
    refused(admin(secured, "option", "set", "transactions", "per-group", auth="mallory:x"),
            "wrong user or password")


def test_reader_reads_but_cannot_change(secured: str) -> None:
    listed = admin(secured, "group", "list", "--json", auth=READER)
    assert listed.exit_code == 0, listed.output
    assert [g["id"] for g in json.loads(listed.stdout)] == ["g1"]
    status = admin(secured, "proxies", "--json", auth=READER)
    assert status.exit_code == 0, status.output
    refused(admin(secured, "option", "set", "transactions", "per-group", auth=READER),
            "these are the cluster's read-only credentials")
    assert json.loads(admin(secured, "option", "get", "transactions", "--json").stdout)["value"] == "single-slot"


def test_what_processes_create_carries_the_acl(secured: str) -> None:
    writer = connect_to_cluster(secured, "c1", ZkCredentials("kvstore", "s3cret-writer"))
    try:
        writer.create(paths.failover("c1", "g1"), b"{}")
        acl, _ = writer.get_acls(paths.failover("c1", "g1"))
        ids = {(a.id.id, a.perms) for a in acl}
        assert ids == {(make_digest_acl_credential("kvstore", "s3cret-writer"), 31),
                       (make_digest_acl_credential("viewer", "s3cret-reader"), 1)}
    finally:
        writer.stop()
        writer.close()


def test_secure_an_existing_cluster_then_change_the_reader(zk_hosts: str, tmp_path: Path) -> None:
    assert admin(zk_hosts, "init", "--mode", "cache", auth=None).exit_code == 0
    open_client = connect(zk_hosts)
    try:
        open_client.create(paths.proxy("c1", "p1"), b"x", ephemeral=True)  # a running proxy's registration
        open_client.set(paths.groups("c1"), open_client.get(paths.groups("c1"))[0])  # open: anyone may write
        no_creds = admin(zk_hosts, "secure", auth=None)
        assert no_creds.exit_code == 1 and "needs the writer's ZooKeeper credentials" in no_creds.stderr
        out = admin(zk_hosts, "secure", "--json")
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)["znodes"] >= 9 and json.loads(out.stdout)["reader"] is None
        for path in (paths.groups("c1"), paths.proxy("c1", "p1")):
            with pytest.raises(NoAuthError):
                open_client.set(path, b"{}")
    finally:
        open_client.stop()
        open_client.close()
    reader_file = tmp_path / "reader"
    reader_file.write_text(READER)
    assert admin(zk_hosts, "group", "list", auth=READER).exit_code == ACCESS_DENIED
    assert admin(zk_hosts, "secure", "--zk-reader-auth-file", str(reader_file)).exit_code == 0
    assert admin(zk_hosts, "group", "list", auth=READER).exit_code == 0
    # Somebody else's credentials cannot take the cluster over.
    refused(admin(zk_hosts, "secure", auth="mallory:x"), "wrong user or password")


def test_credentials_come_from_a_file_or_the_environment(tmp_path: Path) -> None:
    f = tmp_path / "auth"
    f.write_text("kvstore:pw:with:colons\nignored\n")
    assert load_credentials(f) == ZkCredentials("kvstore", "pw:with:colons")
    assert load_credentials(None, {"KVSTORE_ZK_AUTH": "a:b"}) == ZkCredentials("a", "b")
    assert load_credentials(None, {}) is None
    for bad in ("nopassword", ":x", "user:", "us er:x"):
        f.write_text(bad)
        with pytest.raises(ValueError):
            load_credentials(f)
    with pytest.raises(ValueError, match="cannot read"):
        load_credentials(tmp_path / "missing")
    assert "s3cret" not in repr(ZkCredentials("u", "s3cret"))


def test_access_record_is_strict() -> None:
    good = ZkAccess(make_digest_acl_credential("a", "b"), make_digest_acl_credential("r", "s"))
    assert ZkAccess.decode(good.encode()) == good
    for raw in (b'{"writer": 1}', b'{"writer": "nocolon"}', b"[]", b'{"reader": "r:x"}',
                b'{"writer": "a:x", "reader": "a:y"}'):
        with pytest.raises(ModelError):
            ZkAccess.decode(raw)


def test_a_bad_credentials_file_is_a_usage_error(zk_hosts: str, tmp_path: Path) -> None:
    f = tmp_path / "auth"
    f.write_text("no-colon")
    result = CliRunner().invoke(cli, ["--zk", zk_hosts, "--zk-auth-file", str(f), "group", "list"])
    assert result.exit_code == 2 and "expected user:password" in result.output
