"""The routing table as RESP3 sessions see it: every entry replaced by its ``resp3`` counterpart.

A session that negotiated ``HELLO 3`` swaps ``session.router`` for the worker's :class:`Resp3Router`,
once, for its Python paths; its compiled path (``SessionCore.resp3``) takes each slot entry's
``resp3`` itself, and an entry without one gets this router's refusal (``missing``). RESP2 sessions
keep the :class:`~kvstore_proxy.router.Router` itself and pay nothing.

The entry is looked up in the router's current table on every request (no copy to keep in
step), so whatever the router puts in a slot — a Backend, a Refuser, a migration handler — is
what RESP3 clients get, provided it has a ``resp3`` attribute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from kvstore_proxy import resp
from kvstore_proxy.backend import Refuser

if TYPE_CHECKING:
    from kvstore_proxy.datapath import Outbox
    from kvstore_proxy.router import Router

log = structlog.get_logger("kvstore.proxy.router3")


class _Resp3Slots:
    """``router.slot_backend`` for RESP3 sessions: indexing returns the entry's ``resp3``."""

    __slots__ = ("router", "view")

    def __init__(self, router: Router, view: Resp3Router):
        self.router = router
        self.view = view

    def __getitem__(self, slot: int) -> Any:
        try:
            return self.router.slot_backend[slot].resp3
        except AttributeError:
            return self.view.missing(self.router.slot_backend[slot])


class Resp3Router:
    """The parts of :class:`Router` that sessions use, answering with RESP3 connections."""

    def __init__(self, router: Router, outbox: Outbox):
        self.router = router
        self.slot_backend = _Resp3Slots(router, self)
        # A slot table entry that does not say where RESP3 requests go must not get them: its
        # replies would be RESP2, which a RESP3 client would misread (HGETALL as a flat array).
        self._refuse = Refuser(resp.error(
            "ERR kvstore-proxy cannot serve this slot to a RESP3 client right now; retry, or use RESP2"), outbox)
        self._warned: set[type] = set()

    def missing(self, entry: Any) -> Any:
        if type(entry) not in self._warned:
            self._warned.add(type(entry))
            log.error("slot_entry_without_resp3", entry=type(entry).__name__)
        return self._refuse

    def _resp3(self, entry: Any) -> Any:
        twin = getattr(entry, "resp3", None)
        return twin if twin is not None else self.missing(entry)

    def any_backend(self) -> Any:
        return self._resp3(self.router.any_backend())

    def all_backends(self) -> list[Any]:
        return [self._resp3(b) for b in self.router.all_backends()]

    def owns(self, group_index: int, slot: int) -> bool:
        return self.router.owns(group_index, slot)

    def __getattr__(self, name: str) -> Any:
        # Everything else (groups, fenced, versions...) is the router's own.
        return getattr(self.router, name)
