"""Wait until every registered proxy reports it applied a version of a record (a barrier)."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from kvstore_cluster.ops.errors import OpError
from kvstore_cluster.ops.fence import NO_FENCE, Fence
from kvstore_cluster.proxy_registration import ProxyRegistration
from kvstore_cluster.store import ClusterStore, Records

log = structlog.get_logger("kvstore.ops.barrier")


class BarrierTimeout(OpError):
    """Some proxies did not apply the version in time; ``stale`` names them with what they report."""

    def __init__(self, message: str, stale: dict[str, int | None]):
        super().__init__(message)
        self.stale = stale


def wait_for_proxies(store: ClusterStore, applied: Callable[[ProxyRegistration], int], version: int,
                     timeout: float, what: str, fence: Fence = NO_FENCE,
                     check: Callable[[Records[ProxyRegistration]], None] | None = None) -> None:
    """Return once ``applied(registration) >= version`` for every registered proxy (none: at once).

    A proxy registers a version only once every request it routed by the previous one was
    answered, so past the barrier no request of the old routing is still on its way. An
    unreadable registration counts as stale. ``check`` sees the registrations of every poll (it may
    raise to stop).
    Raises :class:`BarrierTimeout` naming the proxies still behind after ``timeout`` seconds.
    """
    began = time.monotonic()
    deadline = began + timeout
    pause = 0.001
    while True:
        fence.check()
        proxies = store.proxies()
        if check is not None:
            check(proxies)
        stale: dict[str, int | None] = {pid: None for pid in proxies.malformed}
        stale.update({pid: applied(reg) for pid, reg in proxies.items.items() if applied(reg) < version})
        if not stale:
            log.debug("barrier_passed", what=what, version=version, seconds=round(time.monotonic() - began, 3))
            return
        if time.monotonic() >= deadline:
            names = ", ".join(f"{pid} (at {v if v is not None else 'unknown'})" for pid, v in sorted(stale.items()))
            raise BarrierTimeout(f"proxies did not apply {what} version {version} within {timeout:g}s: {names}",
                                 stale)
        # Proxies apply a record within milliseconds: poll fast at first, then back off a little.
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
