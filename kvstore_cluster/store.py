"""ClusterStore: read the cluster from ZooKeeper with versions, change it only by checked transactions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RolledBackError,
)
from kazoo.handlers.threading import KazooTimeoutError

from kvstore_cluster import paths, tls
from kvstore_cluster.failover_record import FailoverRecord
from kvstore_cluster.import_state import ImportRunner, ImportState
from kvstore_cluster.keyrules import KeyRules
from kvstore_cluster.leader_election import current_leader
from kvstore_cluster.model import Groups, Meta, ModelError, SlotTable
from kvstore_cluster.node_config import NodeConfig
from kvstore_cluster.options import ClusterOptions
from kvstore_cluster.proxy_registration import ProxyRegistration
from kvstore_cluster.reshard_state import ReshardProgress, ReshardState
from kvstore_cluster.scripts import Library, Script
from kvstore_cluster.sentinel_view import SentinelView
from kvstore_cluster.users import Users

if TYPE_CHECKING:
    from kvstore_cluster.zkauth import ZkAccess, ZkCredentials

T = TypeVar("T")


class StoreError(Exception):
    """A ZooKeeper-side failure, with a message fit to show a user as is."""


class ZooKeeperUnavailable(StoreError):
    pass


class ClusterNotFound(StoreError):
    pass


class ClusterExists(StoreError):
    pass


class VersionConflict(StoreError):
    """Somebody else changed what we read before our transaction committed."""


class CorruptData(StoreError):
    pass


def connect(hosts: str, timeout: float = 5.0, credentials: ZkCredentials | None = None, **kwargs: Any) -> KazooClient:
    """Start a kazoo client (authenticated with ``credentials``, kvstore_cluster.zkauth), or raise
    ``ZooKeeperUnavailable`` after ``timeout`` seconds."""
    if credentials is not None:
        kwargs["auth_data"] = credentials.auth_data
    client = KazooClient(hosts=hosts, timeout=kwargs.pop("session_timeout", 10.0), **kwargs)
    try:
        client.start(timeout=timeout)
    except (KazooTimeoutError, OSError, ValueError) as exc:
        client.stop()
        client.close()
        reason = str(exc) or type(exc).__name__
        raise ZooKeeperUnavailable(f"cannot reach ZooKeeper at {hosts} within {timeout:g}s ({reason})") from None
    return client


@dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    value: T
    version: int


@dataclass(frozen=True, slots=True)
class Records(Generic[T]):
    """The children of a znode decoded as records; those that did not decode, with why, in ``malformed``."""

    items: dict[str, T] = field(default_factory=dict)
    malformed: dict[str, str] = field(default_factory=dict)


# Transaction operations: plain data, so callers build a list and ``commit`` runs it atomically.


@dataclass(frozen=True, slots=True)
class Set:
    path: str
    data: bytes
    version: int


@dataclass(frozen=True, slots=True)
class Check:
    path: str
    version: int


@dataclass(frozen=True, slots=True)
class Create:
    path: str
    data: bytes = b""
    acl: Sequence[Any] | None = None  # None: the client's default (the cluster's ACL, zkauth.establish)


@dataclass(frozen=True, slots=True)
class Delete:
    path: str
    version: int = -1


Op = Set | Check | Create | Delete


class ClusterStore:
    """One cluster's znodes under ``/kvstore/<cluster>``."""

    def __init__(self, client: KazooClient, cluster: str, credentials: ZkCredentials | None = None):
        self.client = client
        self.cluster = cluster
        self.root = paths.cluster_root(cluster)
        self.credentials = credentials  # only to word ZooKeeper's refusals (zkauth.denied)

    def _denied(self, path: str, writing: bool = False) -> StoreError:
        from kvstore_cluster.zkauth import denied

        return denied(path, self.credentials, writing)

    # --- reading ---------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.client.exists(paths.meta(self.cluster)) is not None

    def _read(self, path: str, decode: Callable[[bytes], T]) -> Versioned[T]:
        found = self._read_optional(path, decode)
        if found is None:
            raise StoreError(f"{path} is missing")
        return found

    def read_meta(self) -> Versioned[Meta]:
        return self._read(paths.meta(self.cluster), Meta.decode)

    def read_groups(self) -> Versioned[Groups]:
        found = self._read(paths.groups(self.cluster), Groups.decode)
        tls.remember(found.value)  # which nodes speak TLS, for every connect to a node (tls.py)
        return found

    def read_slots(self) -> Versioned[SlotTable]:
        return self._read(paths.slots(self.cluster), SlotTable.decode)

    def _read_optional(self, path: str, decode: Callable[[bytes], T]) -> Versioned[T] | None:
        """The record at ``path`` with its version, ``None`` if the znode does not exist (and the cluster does)."""
        try:
            data, stat = self.client.get(path)
        except NoAuthError:
            raise self._denied(path) from None
        except NoNodeError:
            # A missing cluster is an error, not "no such record".
            if not self.exists():
                raise ClusterNotFound(f"cluster {self.cluster!r} does not exist (run 'kvstore-admin init')") from None
            return None
        try:
            return Versioned(decode(data), stat.version)
        except ModelError as exc:
            raise CorruptData(f"{path} holds malformed data: {exc}") from None

    def _read_children(self, parent: str, decode: Callable[[bytes], T]) -> Records[T]:
        out: Records[T] = Records()
        try:
            names = self.client.get_children(parent)
        except NoNodeError:
            return out
        except NoAuthError:
            raise self._denied(parent) from None
        for name in sorted(names):
            try:
                data, _ = self.client.get(f"{parent}/{name}")
            except NoNodeError:
                continue  # an ephemeral node went away between the listing and the read
            except NoAuthError:
                out.malformed[name] = "not readable with these ZooKeeper credentials"
                continue
            try:
                out.items[name] = decode(data)
            except ModelError as exc:
                out.malformed[name] = str(exc)
        return out

    def _read_named(self, parent: str, decode: Callable[[bytes, str], T]) -> Records[T]:
        """Children whose record is checked against its znode's name (scripts, libraries)."""
        out: Records[T] = Records()
        try:
            names = self.client.get_children(parent)
        except NoNodeError:
            return out
        for name in sorted(names):
            found = self.read_named(f"{parent}/{name}", name, decode)
            if isinstance(found, str):
                out.malformed[name] = found
            elif found is not None:
                out.items[name] = found
        return out

    def read_named(self, path: str, name: str, decode: Callable[[bytes, str], T]) -> T | str | None:
        """The record at ``path`` (named ``name``), the reason it is malformed, or None if it is gone."""
        try:
            data, _ = self.client.get(path)
        except NoNodeError:
            return None
        try:
            return decode(data, name)
        except ModelError as exc:
            return str(exc)

    def read_scripts(self) -> Records[Script]:
        return self._read_named(paths.scripts(self.cluster), Script.decode)

    def read_libraries(self) -> Records[Library]:
        return self._read_named(paths.functions(self.cluster), Library.decode)

    def read_reshard(self) -> Versioned[ReshardState] | None:
        """The reshard in progress, or ``None``."""
        return self._read_optional(paths.reshard(self.cluster), ReshardState.decode)

    def read_options(self) -> Versioned[ClusterOptions]:
        """The cluster options (version -1: no record yet, every default)."""
        return self._read_optional(paths.options(self.cluster), ClusterOptions.decode) or Versioned(
            ClusterOptions(), -1)

    def read_keyrules(self) -> Versioned[KeyRules]:
        """The key rules (version -1: no record yet, no rules)."""
        return self._read_optional(paths.keyrules(self.cluster), KeyRules.decode) or Versioned(KeyRules(), -1)

    def read_node_config(self) -> Versioned[NodeConfig]:
        """The parameters set cluster-wide (version -1: no record yet, none)."""
        return self._read_optional(paths.node_config(self.cluster), NodeConfig.decode) or Versioned(NodeConfig(), -1)

    def write_node_config(self, config: NodeConfig, version: int) -> None:
        """Replace the record if still at ``version`` (-1: create it); else ``VersionConflict``."""
        path = paths.node_config(self.cluster)
        self.commit([Create(path, config.encode()) if version < 0 else Set(path, config.encode(), version)])

    def read_import(self) -> Versioned[ImportState] | None:
        """The import from a standalone Redis recorded on this cluster (running, stopped or done), or ``None``."""
        return self._read_optional(paths.import_state(self.cluster), ImportState.decode)

    def read_import_runner(self) -> Versioned[ImportRunner] | None:
        """The process running an import on this cluster (ephemeral), or ``None``."""
        return self._read_optional(paths.import_lock(self.cluster), ImportRunner.decode)

    def read_failover(self, group_id: str) -> Versioned[FailoverRecord] | None:
        """The failover or switchover of ``group_id`` in progress, or ``None``."""
        return self._read_optional(paths.failover(self.cluster, group_id), FailoverRecord.decode)

    def failing_over(self) -> list[str]:
        """Groups with a failover record (readable or not)."""
        try:
            return sorted(self.client.get_children(paths.failovers(self.cluster)))
        except NoNodeError:
            return []

    def failovers(self) -> Records[FailoverRecord]:
        return self._read_children(paths.failovers(self.cluster), FailoverRecord.decode)

    def proxies(self) -> Records[ProxyRegistration]:
        return self._read_children(paths.proxies(self.cluster), ProxyRegistration.decode)

    def sentinel_views(self) -> Records[SentinelView]:
        return self._read_children(paths.sentinels(self.cluster), SentinelView.decode)

    def sentinel_leader(self) -> str | None:
        """The id of the sentinel that leads now, or None."""
        return current_leader(self.client, self.cluster)

    # --- writing ---------------------------------------------------------------------------

    def create(self, meta: Meta, groups: Groups, slots: SlotTable, access: ZkAccess | None = None) -> None:
        """Create the whole cluster layout in one transaction; with ``access`` every znode carries
        its ACL (and this client creates with it from now on)."""
        from kazoo.security import OPEN_ACL_UNSAFE

        # /kvstore is shared by every cluster: it stays open so that each can create its own.
        self.client.ensure_path(paths.ROOT, acl=OPEN_ACL_UNSAFE)
        if access is not None:
            self.client.default_acl = access.acl()
        ops: list[Op] = [
            Create(self.root),
            Create(paths.meta(self.cluster), meta.encode()),
            Create(paths.groups(self.cluster), groups.encode()),
            Create(paths.slots(self.cluster), slots.encode()),
            *(Create(p) for p in paths.containers(self.cluster)),
        ]
        if access is not None:
            ops.append(Create(paths.access(self.cluster), access.encode()))
        try:
            self.commit(ops)
        except StoreError as exc:
            if self.client.exists(self.root) is not None:
                raise ClusterExists(f"cluster {self.cluster!r} already exists") from None
            raise exc

    def commit(self, ops: Sequence[Op]) -> None:
        """Run ``ops`` atomically; raise ``VersionConflict`` if a checked version moved."""
        txn = self.client.transaction()
        for op in ops:
            if isinstance(op, Set):
                txn.set_data(op.path, op.data, version=op.version)
            elif isinstance(op, Check):
                txn.check(op.path, op.version)
            elif isinstance(op, Create):
                txn.create(op.path, op.data, acl=op.acl)
            elif isinstance(op, Delete):
                txn.delete(op.path, version=op.version)
            else:  # pragma: no cover - a programming error
                raise TypeError(f"unknown transaction op {op!r}")
        results = txn.commit()
        # commit() does not raise: each result is either True/a path/a stat or an exception.
        for op, result in zip(ops, results, strict=True):
            if isinstance(result, RolledBackError) or not isinstance(result, Exception):
                continue
            if isinstance(result, BadVersionError):
                raise VersionConflict(
                    f"{op.path} was changed by someone else meanwhile; nothing was written, try again"
                )
            if isinstance(result, NodeExistsError):
                raise StoreError(f"{op.path} already exists; nothing was written")
            if isinstance(result, NoNodeError):
                if not self.exists():
                    raise ClusterNotFound(f"cluster {self.cluster!r} does not exist")
                raise StoreError(f"{op.path} does not exist; nothing was written")
            if isinstance(result, NoAuthError):
                raise self._denied(op.path, writing=True)
            if isinstance(result, NotEmptyError):
                raise StoreError(f"{op.path} is not empty; nothing was written")
            raise StoreError(f"transaction failed at {op.path}: {type(result).__name__}")

    def set_groups(self, groups: Groups, version: int) -> None:
        self.commit([Set(paths.groups(self.cluster), groups.encode(), version)])

    def set_slots(self, slots: SlotTable, version: int) -> None:
        self.commit([Set(paths.slots(self.cluster), slots.encode(), version)])

    def set_groups_and_slots(self, groups: Versioned[Groups], slots: Versioned[SlotTable]) -> None:
        """Replace both tables in one transaction, each checked against the version read."""
        self.commit([
            Set(paths.groups(self.cluster), groups.value.encode(), groups.version),
            Set(paths.slots(self.cluster), slots.value.encode(), slots.version),
        ])

    def write_options(self, options: ClusterOptions, version: int) -> None:
        """Replace the options if still at ``version`` (-1: create the record); else ``VersionConflict``."""
        path = paths.options(self.cluster)
        self.commit([Create(path, options.encode()) if version < 0 else Set(path, options.encode(), version)])

    def keyrules_op(self, rules: KeyRules, version: int) -> Op:
        """The transaction op that writes ``rules`` over ``version`` (-1: creates the record)."""
        path = paths.keyrules(self.cluster)
        return Create(path, rules.encode()) if version < 0 else Set(path, rules.encode(), version)

    def register_script(self, script: Script) -> bool:
        """Add ``script`` to the registry; False if it was there already."""
        return self._create_child(paths.script(self.cluster, script.sha), script.encode())

    def put_library(self, name: str, library: Library) -> None:
        """Add or replace the function library ``name``."""
        path = paths.function(self.cluster, name)
        if not self._create_child(path, library.encode()):
            self.client.set(path, library.encode())

    def delete_library(self, name: str) -> None:
        try:
            self.client.delete(paths.function(self.cluster, name))
        except NoNodeError:
            pass

    def clear_registry(self, parent: str) -> int:
        """Delete every child of ``parent`` (SCRIPT FLUSH, FUNCTION FLUSH); how many there were."""
        try:
            names = self.client.get_children(parent)
        except NoNodeError:
            return 0
        for name in names:
            try:
                self.client.delete(f"{parent}/{name}")
            except NoNodeError:
                pass
        return len(names)

    def _create_child(self, path: str, data: bytes) -> bool:
        try:
            self.client.create(path, data, makepath=True)
        except NodeExistsError:
            return False
        return True

    def read_users(self) -> Versioned[Users]:
        """The proxy's users (version -1: no record yet, no user but ``default``)."""
        return self._read_optional(paths.users(self.cluster), Users.decode) or Versioned(Users(), -1)

    def write_users(self, users: Users, version: int) -> None:
        """Replace the users if still at ``version`` (-1: create the record, readable by the writer
        identity only when the cluster is secured); else ``VersionConflict``."""
        from kvstore_cluster.zkauth import acl_for, read_access

        path = paths.users(self.cluster)
        if version < 0:
            access = read_access(self.client, self.cluster, self.credentials)
            op: Op = Create(path, users.encode(), acl_for(path, self.cluster, access) if access else None)
        else:
            op = Set(path, users.encode(), version)
        self.commit([op])

    def secure(self, access: ZkAccess) -> int:
        """Record ``access`` and give every znode of the cluster the ACL it implies; the znodes changed.

        The record goes first, so processes following it (zkauth.establish) create with the new
        ACL before the walk reaches what they created. Idempotent: run it again after a crash.
        """
        from kvstore_cluster.zkauth import acl_for

        if not self.exists():
            raise ClusterNotFound(f"cluster {self.cluster!r} does not exist (run 'kvstore-admin init')")
        path = paths.access(self.cluster)
        try:
            try:
                self.client.create(path, access.encode(), acl=access.acl())
            except NodeExistsError:
                self.client.set(path, access.encode())
        except NoAuthError:
            raise self._denied(path, writing=True) from None
        changed = 0
        pending = [self.root]
        while pending:
            node = pending.pop()
            try:
                self.client.set_acls(node, acl_for(node, self.cluster, access))
                pending.extend(f"{node}/{child}" for child in self.client.get_children(node))
            except NoNodeError:
                continue  # an ephemeral node went away meanwhile
            except NoAuthError:
                raise self._denied(node, writing=True) from None
            changed += 1
        return changed

    def destroy(self) -> None:
        """Delete the cluster and everything under it."""
        try:
            self.client.delete(self.root, recursive=True)
        except NoNodeError:
            raise ClusterNotFound(f"cluster {self.cluster!r} does not exist") from None
        except NoAuthError:
            raise self._denied(self.root, writing=True) from None

    def _register(self, path: str, data: bytes) -> None:
        """Create (or replace) the ephemeral node ``path``."""
        try:
            self.client.create(path, data, ephemeral=True)
        except NodeExistsError:
            self.client.set(path, data)
        except NoNodeError:
            raise ClusterNotFound(f"cluster {self.cluster!r} does not exist") from None
        except NoAuthError:
            raise self._denied(path, writing=True) from None

    def publish_reshard_progress(self, progress: ReshardProgress) -> None:
        self._register(paths.reshard_progress(self.cluster), progress.encode())

    def read_reshard_progress(self) -> ReshardProgress | None:
        """The running executor's live progress, ``None`` when no executor runs."""
        found = self._read_optional(paths.reshard_progress(self.cluster), ReshardProgress.decode)
        return None if found is None else found.value

    def clear_reshard_progress(self) -> None:
        try:
            self.client.delete(paths.reshard_progress(self.cluster))
        except NoNodeError:
            pass

    def register_proxy(self, proxy_id: str, registration: ProxyRegistration) -> None:
        self._register(paths.proxy(self.cluster, proxy_id), registration.encode())

    def publish_view(self, view: SentinelView) -> None:
        self._register(paths.sentinel(self.cluster, view.id), view.encode())
