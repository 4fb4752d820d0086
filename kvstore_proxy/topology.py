"""Follows ZooKeeper: watches groups and slots, applies them, registers the proxy, fences when cut off."""

from __future__ import annotations

import asyncio
import os
import re
from typing import TYPE_CHECKING, Any

import structlog
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NoNodeError

from kvstore_cluster import paths, tls
from kvstore_cluster.keyrules import KeyRules, tag_slot
from kvstore_cluster.model import Groups, ModelError, SlotTable
from kvstore_cluster.options import ClusterOptions
from kvstore_cluster.proxy_registration import ProxyRegistration
from kvstore_cluster.store import ClusterStore, CorruptData
from kvstore_cluster.users import Users
from kvstore_cluster.zkbridge import LoopBridge

if TYPE_CHECKING:
    from kvstore_proxy.server import Worker

DEREGISTER_TIMEOUT = 2.0  # seconds

log = structlog.get_logger("kvstore.proxy.topology")

# kazoo reports SUSPENDED only after 2/3 of the session timeout without a word from the server;
# the server may expire the session at the full timeout. Fencing FENCE_AFTER x timeout after
# SUSPENDED therefore stops keyed commands at ~0.87 of the timeout of silence, before any other
# process can treat this proxy as gone (its ephemeral node vanishes with the session).
FENCE_AFTER = 0.2


class Topology:
    """The proxy's view of ZooKeeper; hands every fresh table to the router on the loop."""

    def __init__(self, worker: Worker, client: KazooClient):
        self.worker = worker
        self.client = client
        self.cluster = worker.config.cluster
        self.store = ClusterStore(client, self.cluster)
        self.loop = worker.loop
        self.bridge = LoopBridge(client, self.loop)
        self.state = "connected"
        self.groups: tuple[Groups, int] | None = None
        self.slots: tuple[SlotTable, int] | None = None
        # The newest znode version of each table a watch delivered, applied or not (metrics.py).
        self.seen: dict[str, int] = {}
        self.options_version = -1  # the options record's version applied (-1: none, or no znode)
        self.ready = asyncio.Event()
        self.proxy_id = worker.proxy_id
        self.path = paths.proxy(self.cluster, worker.proxy_id)
        self._fence_timer: asyncio.TimerHandle | None = None
        self._lost = False
        self._registering = False
        self._register_again = False
        self._stopped = False

    def start(self) -> None:
        self.bridge.watch_state(self._on_state)
        self.bridge.watch_data(paths.groups(self.cluster), self._on_groups)
        self.bridge.watch_data(paths.slots(self.cluster), self._on_slots)
        self.bridge.watch_data(paths.reshard(self.cluster), self._on_reshard)
        self.bridge.watch_data(paths.options(self.cluster), self._on_options)
        self.bridge.watch_data(paths.keyrules(self.cluster), self._on_keyrules)
        self.bridge.watch_data(paths.users(self.cluster), self._on_users)

    # --- tables ---------------------------------------------------------------------------------

    def _on_groups(self, data: bytes | None, stat: Any) -> None:
        if stat is not None:
            self.seen["groups"] = stat.version
        if data is None:
            log.error("table_missing", table="groups", path=paths.groups(self.cluster))
            return
        try:
            value = Groups.decode(data)
        except ModelError as exc:
            log.error("table_rejected", table="groups", version=stat.version, error=str(exc))
            return
        tls.remember(value)  # which nodes speak TLS (backends, leases connect with it)
        self.groups = (value, stat.version)
        self._apply()

    def _on_slots(self, data: bytes | None, stat: Any) -> None:
        if stat is not None:
            self.seen["slots"] = stat.version
        if data is None:
            log.error("table_missing", table="slots", path=paths.slots(self.cluster))
            return
        try:
            value = SlotTable.decode(data)
        except ModelError as exc:
            log.error("table_rejected", table="slots", version=stat.version, error=str(exc))
            return
        self.slots = (value, stat.version)
        self._apply()

    def _on_reshard(self, data: bytes | None, stat: Any) -> None:
        self.worker.router.set_reshard(data)

    def _on_options(self, data: bytes | None, stat: Any) -> None:
        if stat is not None:
            self.seen["options"] = stat.version
        try:
            value = ClusterOptions() if data is None else ClusterOptions.decode(data)
        except ModelError as exc:
            log.error("options_rejected", version=stat.version, error=str(exc), kept=self.worker.options.values)
            return
        if value != self.worker.options:
            log.info("options_applied", version=stat.version if stat is not None else -1, options=value.values)
        self.worker.options = value
        self.worker.keyless_slot = tag_slot(value.keyless_tag)
        self.options_version = stat.version if stat is not None else -1

    def _on_keyrules(self, data: bytes | None, stat: Any) -> None:
        version = stat.version if stat is not None else -1
        if stat is not None:
            self.seen["keyrules"] = version
        try:
            value = KeyRules() if data is None else KeyRules.decode(data)
        except ModelError as exc:
            # Keeping the rules we had: an executor waiting for this version names us (the barrier).
            log.error("keyrules_rejected", version=version, error=str(exc),
                      kept_version=self.worker.router.keyrules_version)
            return
        self._apply_keyrules(value, version)

    def _apply_keyrules(self, value: KeyRules, version: int) -> None:
        router = self.worker.router
        if version == router.keyrules_version and value == router.keyrules:
            return
        router.set_keyrules(value, version)
        log.info("keyrules_applied", version=version, rules=len(value.rules),
                 change=value.change.request if value.change is not None else None, hubs=len(router.hubs))
        self.register()

    def _on_users(self, data: bytes | None, stat: Any) -> None:
        if stat is not None:
            self.seen["users"] = stat.version
        try:
            value = Users() if data is None else Users.decode(data)
        except ModelError as exc:
            log.error("users_rejected", version=stat.version, error=str(exc), kept=sorted(self.worker.users.by_name))
            return
        self.worker.users.apply(value)

    def _apply(self) -> None:
        if self.groups is None or self.slots is None or self._stopped:
            return
        router = self.worker.router
        (groups, gv), (slots, sv) = self.groups, self.slots
        if gv == router.groups_version and sv == router.slots_version and router.groups is not None:
            return
        router.apply(groups, gv, slots, sv)
        log.info("table_applied", groups_version=gv, slots_version=sv, groups=len(groups),
                 migrating=len(slots.migrating))
        self.ready.set()
        self.register()

    # --- registration ---------------------------------------------------------------------------

    def registration(self) -> ProxyRegistration:
        """What we register: the versions applied and (by default) every protocol of this release.

        The migration protocol is migrating.py's; the reshard executor refuses to mark slots while
        a registered proxy does not speak it (docs/design.md, "Resharding").
        """
        w = self.worker
        return ProxyRegistration(address=f"{w.config.host}:{w.port}", pid=os.getpid(), started_at=w.started_at,
                                 slots_version=w.router.slots_version, groups_version=w.router.groups_version,
                                 fenced=w.router.fenced, keyrules_version=w.router.keyrules_version)

    def register(self) -> None:
        """Write our node (again) with the versions applied; coalesces bursts of table changes."""
        if not self.worker.listening or self._stopped:
            return
        if self._registering:
            self._register_again = True
            return
        self._registering = True
        self.loop.create_task(self._register())

    async def _register(self) -> None:
        try:
            while True:
                self._register_again = False
                # What we say we applied is what we applied before draining: a request sent before
                # a newer table is only covered by the next round's drain.
                registration = self.registration()
                try:
                    await self.worker.router.drained(self.worker.config.timeout)
                except Exception as exc:  # noqa: BLE001 - never leave a version unregistered
                    log.error("drain_before_register_failed", error=str(exc) or type(exc).__name__)
                try:
                    await self.loop.run_in_executor(None, self.store.register_proxy, self.proxy_id, registration)
                    log.debug("registered", path=self.path, **registration.to_json())
                except (KazooException, OSError, Exception) as exc:  # noqa: BLE001 - retried on reconnect
                    log.warning("register_failed", path=self.path, error=str(exc) or type(exc).__name__)
                if not self._register_again or self._stopped:
                    break
        finally:
            self._registering = False

    def deregister(self, timeout: float = DEREGISTER_TIMEOUT) -> None:
        """Remove our node (blocking, bounded; used on shutdown).

        Bounded because kazoo's synchronous calls wait forever while ZooKeeper is unreachable, and
        a SIGTERM must still end the process; the node is ephemeral, so the session's end removes it.
        """
        self._stopped = True
        try:
            self.client.delete_async(self.path).get(timeout=timeout)
        except NoNodeError:
            pass
        except Exception as exc:  # noqa: BLE001 - we are going away anyway; the session end removes it
            log.warning("deregister_failed", path=self.path, error=str(exc) or type(exc).__name__)

    # --- fencing --------------------------------------------------------------------------------

    def _on_state(self, state: KazooState) -> None:
        router = self.worker.router
        if state == KazooState.SUSPENDED:
            self.state = "suspended"
            log.warning("zk_suspended")
            if self._fence_timer is None:
                delay = self.worker.config.zk_session_timeout * FENCE_AFTER
                self._fence_timer = self.loop.call_later(
                    delay, router.fence, "cut off from ZooKeeper (connection suspended)")
        elif state == KazooState.LOST:
            self.state = "lost"
            self._lost = True
            self._cancel_fence_timer()
            router.fence("ZooKeeper session lost")
        else:
            was = self.state
            self.state = "connected"
            self._cancel_fence_timer()
            if was != "connected":
                log.info("zk_reconnected", was=was)
            if router.fenced or self._lost:
                self.loop.create_task(self._refresh())

    def _cancel_fence_timer(self) -> None:
        if self._fence_timer is not None:
            self._fence_timer.cancel()
            self._fence_timer = None

    async def _refresh(self) -> None:
        """Re-read both tables after a cut; only then serve keyed commands again."""
        try:
            groups = await self.loop.run_in_executor(None, self.store.read_groups)
            slots = await self.loop.run_in_executor(None, self.store.read_slots)
            try:
                rules = await self.loop.run_in_executor(None, self.store.read_keyrules)
            except CorruptData as exc:  # garbage keeps the rules we had, never the fence
                log.error("keyrules_rejected", error=str(exc), kept_version=self.worker.router.keyrules_version)
                rules = None
        except Exception as exc:  # noqa: BLE001 - stay fenced; the next reconnect tries again
            log.warning("refresh_failed", error=str(exc) or type(exc).__name__)
            return
        if self.state != "connected":
            return
        self.groups = (groups.value, groups.version)  # read_groups told tls.py
        self.slots = (slots.value, slots.version)
        self._lost = False
        self._apply()
        if rules is not None:
            self._apply_keyrules(rules.value, rules.version)
        self.worker.router.unfence()
        self.register()


def proxy_id(host: str, port: int) -> str:
    """``hostname-port-pid``, made safe as a znode name."""
    node = re.sub(r"[^A-Za-z0-9_.-]", "-", os.uname().nodename.split(".")[0]).strip("-.") or "proxy"
    return f"{node[:40]}-{port}-{os.getpid()}"
