"""The worker's side of stateful clients: the lease pool, who holds what, and reacting to table changes.

When ZooKeeper's tables change (a slot marked, released or committed, a master replaced, the
proxy fenced), the router calls :meth:`StatefulHub.routes_changed`, which visits only the clients
with a stake in it: blocked clients are moved to the slot's new master, WATCHes whose slot moved
are broken (their EXEC answers nil), subscriptions follow their channels. Plain clients are
never visited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from kvstore_proxy.leases import LeasePool

if TYPE_CHECKING:
    from kvstore_proxy.server import Worker

log = structlog.get_logger("kvstore.proxy.stateful")


class StatefulHub:
    """One per worker."""

    def __init__(self, worker: Worker):
        self.worker = worker
        cfg = worker.config
        self.pool = LeasePool(worker.loop, cfg.backend_password, cfg.max_leases, cfg.max_leases_per_client)
        self.blocked: set[Any] = set()  # blocking.Blocked
        self.watchers: set[Any] = set()  # ClientState with a WATCH
        self.subscribers: set[Any] = set()  # ClientState with subscriptions
        self.execs: set[Any] = set()  # transactions.Exec in flight
        worker.router.listeners.append(self.routes_changed)

    def routes_changed(self) -> None:
        from kvstore_proxy import blocking, pubsub, transactions

        router = self.worker.router
        masters = {b.address for b in router.backends.values()}
        self.pool.set_masters(masters)
        for run in list(self.execs):
            transactions.exec_routes_changed(run, masters)
        for st in list(self.watchers):
            transactions.watch_routes_changed(st, router)
        for b in list(self.blocked):
            blocking.routes_changed(b, router, masters)
        if not router.fenced:  # a fence says nothing about where channels live: keep them
            for st in list(self.subscribers):
                pubsub.reconcile(st)

    def close(self) -> None:
        self.pool.close_all()
