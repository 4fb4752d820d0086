"""Leader election on ``sentinel-leader/`` (kazoo Lock's node layout) and the fence every side effect checks."""

from __future__ import annotations

import asyncio
import threading
import uuid

import structlog
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import ConnectionClosedError, NoNodeError, SessionExpiredError, ZookeeperError
from kazoo.handlers.threading import KazooTimeoutError

from kvstore_cluster.leader_election import NODE_NAME, in_order
from kvstore_cluster.ops.fence import Fenced
from kvstore_cluster.store import Check

log = structlog.get_logger("kvstore.sentinel.election")

RESIGN_TIMEOUT = 2.0  # seconds


class LeaderFence:
    """Whether this process may act as leader right now (the ``Fence`` of kvstore_cluster.ops).

    The flag is cleared straight from kazoo's connection listener thread (a single assignment, no
    logic): waiting for the event loop to get round to it would let a suspended leader take one more
    side effect.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._acting = False
        self.node: str | None = None  # our election znode while we lead

    @property
    def acting(self) -> bool:
        return self._acting

    def grant(self, node: str) -> None:
        with self._lock:
            self.node = node
            self._acting = True

    def revoke(self) -> None:
        with self._lock:
            self._acting = False

    def check(self) -> None:
        """Raise ``Fenced`` unless we still lead over a connected session."""
        if not self._acting:
            raise Fenced("this sentinel is not the connected leader")

    def zk_checks(self) -> list[Check]:
        """Transaction ops that fail unless our election node still exists (our session is alive)."""
        self.check()
        assert self.node is not None
        return [Check(self.node, 0)]


class Leadership:
    """Contends for leadership forever; ``fence`` says whether we lead at this instant."""

    def __init__(self, client: KazooClient, path: str, identifier: str, loop: asyncio.AbstractEventLoop):
        self.client = client
        self.path = path
        self.identifier = identifier
        self.loop = loop
        self.fence = LeaderFence()
        self.prefix = uuid.uuid4().hex + NODE_NAME
        self._wake = asyncio.Event()
        self._node: str | None = None
        self._is_leader_node = False
        self.elected = 0  # times this sentinel became leader (metrics)
        self._state = KazooState.CONNECTED if client.connected else KazooState.SUSPENDED
        client.add_listener(self._on_state)

    # Runs on a kazoo thread: clear the fence at once, hand the rest to the loop.
    def _on_state(self, state: KazooState) -> None:
        if state != KazooState.CONNECTED:
            self.fence.revoke()
        try:
            self.loop.call_soon_threadsafe(self._state_changed, state)
        except RuntimeError:
            pass  # loop closed: we are shutting down

    def _state_changed(self, state: KazooState) -> None:
        previous, self._state = self._state, state
        if state == KazooState.SUSPENDED and self._node is not None and self._is_leader_node:
            log.warning("leadership_suspended", reason="ZooKeeper connection suspended; not acting")
        elif state == KazooState.LOST:
            if self._node is not None:
                log.warning("leadership_lost", reason="ZooKeeper session expired")
            self._node = None
        elif state == KazooState.CONNECTED and previous != KazooState.CONNECTED:
            log.info("zookeeper_reconnected")
        self._wake.set()

    def _children_changed(self, _event: object) -> None:
        try:
            self.loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:
            pass

    async def _call(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        return await self.loop.run_in_executor(None, lambda: fn(*args, **kwargs))

    async def run(self) -> None:
        """Contend until cancelled; grant and revoke the fence as leadership comes and goes."""
        while True:
            self._wake.clear()
            try:
                await self._step()
            except (ConnectionClosedError, SessionExpiredError, ZookeeperError, OSError) as exc:
                self.fence.revoke()
                log.warning("election_error", error=f"{type(exc).__name__}: {exc}")
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except TimeoutError:
                pass

    async def _step(self) -> None:
        if self._state != KazooState.CONNECTED:
            self.fence.revoke()
            return
        children = await self._call(self.client.get_children, self.path, watch=self._children_changed)
        mine = [c for c in children if c.startswith(self.prefix)]
        if not mine:
            if self._node is not None:
                log.warning("leadership_lost", reason="our election node is gone")
            self.fence.revoke()
            self._is_leader_node = False
            # A create that succeeded on the server but whose reply was lost leaves a node with our
            # prefix; searching by prefix above adopts it instead of contending twice.
            self._node = await self._call(self.client.create, f"{self.path}/{self.prefix}",
                                          self.identifier.encode(), ephemeral=True, sequence=True)
            return  # the create fires the children watch; re-list then
        self._node = f"{self.path}/{mine[0]}"
        first = in_order(children)[:1] == mine[:1]
        if first and self._state == KazooState.CONNECTED:
            if not self.fence.acting:
                self.fence.grant(self._node)
                # kazoo sets client.state before it calls listeners: either the listener revokes
                # after this grant, or this check sees the new state. No window grants a stale lead.
                if self.client.state != KazooState.CONNECTED:
                    self.fence.revoke()
                    return
                self._is_leader_node = True
                self.elected += 1
                log.info("leader_elected", node=self._node)
        else:
            if self.fence.acting:
                log.warning("leadership_lost", reason="another contender is first")
            self.fence.revoke()
            self._is_leader_node = False

    async def resign(self) -> None:
        """Give up leadership (delete our node) so a standby takes over at once."""
        self.fence.revoke()
        if self._node is not None:
            # Bounded: a synchronous delete waits forever while ZooKeeper is unreachable, and a
            # SIGTERM must still end the sentinel; the node is ephemeral and goes with the session.
            try:
                await self._call(lambda: self.client.delete_async(self._node).get(timeout=RESIGN_TIMEOUT))
            except (NoNodeError, ZookeeperError, ConnectionClosedError, SessionExpiredError, KazooTimeoutError):
                pass
            self._node = None

