"""ZooKeeper credentials of a kvstore process, the cluster's ``access`` record and the ACLs it implies.

Every process authenticates with digest credentials ``user:password`` read from ``KVSTORE_ZK_AUTH``
or from a file (``--zk-auth-file``), never from a command-line value. A secured cluster has an
``access`` record naming two identities by their digest (``user:base64(sha1(user:password))``,
what ZooKeeper itself stores in an ACL): the *writer*, the one identity every kvstore process
runs as, with every permission on every znode, and an optional read-only *reader* for viewers
(``kvstore-admin status``, ``kvstore-admin web``). Nobody else may read or change anything. The
``users`` record (password hashes) is readable by the writer only.

Digest authentication never fails in ZooKeeper (a wrong password is just another identity), so
``establish`` reads the access record after connecting: a refusal there is the one clear error
for missing or wrong credentials.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NoNodeError
from kazoo.security import ACL, OPEN_ACL_UNSAFE, Id, Permissions, make_digest_acl_credential

from kvstore_cluster import codec, paths
from kvstore_cluster.codec import ModelError
from kvstore_cluster.store import StoreError, connect

ENV = "KVSTORE_ZK_AUTH"
HINT = f"give the cluster's ZooKeeper credentials (user:password) in {ENV} or a file named by --zk-auth-file"

WRITER, READER, OPEN = "writer", "reader", "open"


class AccessDenied(StoreError):
    """ZooKeeper refused this process's identity; the message says what to do."""


@dataclass(frozen=True, slots=True)
class ZkCredentials:
    """A digest identity ``user:password``; the password never appears in a repr."""

    user: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.user or ":" in self.user or any(c.isspace() for c in self.user):
            raise ValueError("ZooKeeper credentials must be user:password with a user name of no ':' or spaces")
        if not self.password:
            raise ValueError("ZooKeeper credentials must be user:password with a non-empty password")

    @classmethod
    def parse(cls, text: str, source: str) -> ZkCredentials:
        user, sep, password = text.strip("\r\n").partition(":")
        if not sep:
            raise ValueError(f"{source}: expected user:password")
        try:
            return cls(user, password)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    @property
    def digest_id(self) -> str:
        """The identity as ZooKeeper's digest scheme names it in ACLs."""
        return str(make_digest_acl_credential(self.user, self.password))

    @property
    def auth_data(self) -> list[tuple[str, str]]:
        return [("digest", f"{self.user}:{self.password}")]


def load_credentials(path: str | Path | None, env: dict[str, str] | None = None,
                     variable: str = ENV) -> ZkCredentials | None:
    """The credentials in the file ``path`` (its first line), else in ``$KVSTORE_ZK_AUTH``, else None."""
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read the ZooKeeper credentials file {path}: {exc.strerror or exc}") from None
        lines = text.splitlines()
        return ZkCredentials.parse(lines[0] if lines else "", str(path))
    value = (os.environ if env is None else env).get(variable)
    return ZkCredentials.parse(value, variable) if value else None


def _digest_id(value: Any, what: str) -> str:
    user, sep, digest = value.partition(":") if isinstance(value, str) else ("", "", "")
    if not (user and sep and digest) or ":" in digest:
        raise ModelError(f"{what} must be a digest identity user:base64-sha1, got {value!r}")
    return str(value)


@dataclass(frozen=True, slots=True)
class ZkAccess:
    """The ``access`` record: who may change the cluster (writer) and who may only read it (reader)."""

    writer: str
    reader: str | None = None

    def __post_init__(self) -> None:
        _digest_id(self.writer, "access: writer")
        if self.reader is not None:
            _digest_id(self.reader, "access: reader")
            if self.reader.partition(":")[0] == self.writer.partition(":")[0]:
                raise ModelError("access: the reader must be another user than the writer")

    def acl(self) -> list[ACL]:
        """What every znode of the cluster carries."""
        out = [ACL(Permissions.ALL, Id("digest", self.writer))]
        if self.reader is not None:
            out.append(ACL(Permissions.READ, Id("digest", self.reader)))
        return out

    def private_acl(self) -> list[ACL]:
        """What secrets (the users record) carry: the writer only."""
        return [ACL(Permissions.ALL, Id("digest", self.writer))]

    def role(self, credentials: ZkCredentials | None) -> str | None:
        if credentials is None:
            return None
        ident = credentials.digest_id
        return WRITER if ident == self.writer else READER if ident == self.reader else None

    def encode(self) -> bytes:
        return codec.dump_object({"writer": self.writer, "reader": self.reader})

    @classmethod
    def decode(cls, raw: bytes | str) -> ZkAccess:
        obj = codec.load_object(raw, "access")
        return cls(writer=codec.field(obj, "writer", str, "access"),
                   reader=codec.optional(obj, "reader", str, "access"))


def acl_for(path: str, cluster: str, access: ZkAccess | None) -> list[ACL]:
    """The ACL ``path`` of ``cluster`` must carry."""
    if access is None:
        return list(OPEN_ACL_UNSAFE)
    return access.private_acl() if path == paths.users(cluster) else access.acl()


def denied(path: str, credentials: ZkCredentials | None, writing: bool = False) -> AccessDenied:
    """The one error for a refusal by ZooKeeper, saying which case it is."""
    verb = "change" if writing else "read"
    if credentials is None:
        return AccessDenied(f"ZooKeeper refused to {verb} {path}: the cluster is secured with ZooKeeper ACLs "
                            f"and no credentials were given ({HINT})")
    return AccessDenied(f"ZooKeeper refused to {verb} {path} for user {credentials.user!r}: "
                        + ("these are the cluster's read-only credentials" if writing else
                           f"wrong user or password ({HINT})"))


def read_access(client: KazooClient, cluster: str, credentials: ZkCredentials | None) -> ZkAccess | None:
    """The cluster's access record, None if it has none (an open cluster, or no cluster)."""
    path = paths.access(cluster)
    try:
        data, _ = client.get(path)
    except NoNodeError:
        try:
            client.get(paths.cluster_root(cluster))
        except NoNodeError:
            return None
        except NoAuthError:
            raise denied(paths.cluster_root(cluster), credentials) from None
        return None
    except NoAuthError:
        raise denied(path, credentials) from None
    try:
        return ZkAccess.decode(data)
    except ModelError as exc:
        raise AccessDenied(f"{path} holds malformed data: {exc}") from None


def establish(client: KazooClient, cluster: str, credentials: ZkCredentials | None) -> str:
    """Check this process's identity against the cluster's access record and make everything the
    client creates from now on carry the cluster's ACL; returns the role (writer, reader, open).

    The record is followed (a kazoo data watch), so a cluster secured while this process runs
    gets the right ACL on what it creates next.
    """
    access = read_access(client, cluster, credentials)
    role = _apply(client, cluster, access, credentials)

    def changed(data: bytes | None, stat: Any) -> None:
        try:
            _apply(client, cluster, ZkAccess.decode(data) if data else None, credentials)
        except (ModelError, AccessDenied):
            pass  # keep what it had: the next start reports the problem

    try:
        client.DataWatch(paths.access(cluster), changed)
    except NoAuthError:
        pass
    return role


def _apply(client: KazooClient, cluster: str, access: ZkAccess | None, credentials: ZkCredentials | None) -> str:
    if access is None:
        client.default_acl = None
        return OPEN
    role = access.role(credentials)
    if role is None:
        raise denied(paths.cluster_root(cluster), credentials)
    client.default_acl = access.acl() if role == WRITER else None
    return role


def connect_to_cluster(hosts: str, cluster: str, credentials: ZkCredentials | None, timeout: float = 5.0,
                       **kwargs: Any) -> KazooClient:
    """``store.connect`` then ``establish``: a started client whose identity the cluster accepts
    (``AccessDenied`` otherwise, the client stopped)."""
    client = connect(hosts, timeout, credentials, **kwargs)
    try:
        establish(client, cluster, credentials)
    except BaseException:
        client.stop()
        client.close()
        raise
    return client
