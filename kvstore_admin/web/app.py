"""``kvstore-admin web``: a read-only status page and its JSON API, over one HTTP listener.

=====================  ==========================================================================
``/``                  the page (page.html: plain HTML, CSS and JavaScript; no build step)
``/api/``              the list of endpoints
``/api/status``        everything ``kvstore-admin status --json`` shows, plus ``live`` (freshness)
``/api/groups``        ... one part of it: ``groups``, ``slots``, ``proxies``, ``sentinels``,
``/api/slots``         ``reshard``, ``failovers`` (each ``{"<part>": ..., "live": ...}``)
``/api/events``        server-sent events: the whole status at once, then again at every change
=====================  ==========================================================================

Unknown paths answer 404, other methods than GET/HEAD 405, both as JSON (httpserve.py).
"""

from __future__ import annotations

import asyncio
import signal
from importlib import resources
from typing import Any

import structlog

from kvstore_admin.web.live import LiveStatus
from kvstore_cluster.httpserve import HttpServer, Request, Response, Stream, error_response, json_response

log = structlog.get_logger("kvstore.admin.web")

PARTS = {
    "groups": lambda s: s.get("groups"),
    "slots": lambda s: s.get("slots"),
    "proxies": lambda s: s.get("proxies"),
    "sentinels": lambda s: {**s.get("sentinels", {}), "view": s.get("sentinel_view")},
    "reshard": lambda s: s.get("reshard"),
    "failovers": lambda s: (s.get("sentinel_view") or {}).get("failovers", {}),
}


class WebApp:
    def __init__(self, live: LiveStatus, host: str, port: int):
        self.live = live
        self.http = HttpServer(host, port)
        self.page = resources.files("kvstore_admin.web").joinpath("page.html").read_bytes()
        self.http.route("/", self._page)
        self.http.route("/index.html", self._page)
        self.http.route("/api/", self._api)

    async def _page(self, request: Request) -> Response:
        return Response(200, self.page, "text/html; charset=utf-8")

    async def _api(self, request: Request) -> Response | Stream:
        name = request.path.removeprefix("/api").strip("/")
        if name == "":
            return json_response({"endpoints": ["/api/status", "/api/events", *(f"/api/{p}" for p in PARTS)]})
        if name == "events":
            return Stream(self.live.changes())
        snap = self.live.snapshot.to_json()
        if snap.get("cluster") is None:  # never read yet: nothing to show, say why
            return error_response(503, f"no status read yet: {snap['live']['stale_reason']}")
        if name == "status":
            return json_response(snap)
        part = PARTS.get(name)
        if part is None:
            return error_response(404, f"no such endpoint: /api/{name} (see /api/)")
        return json_response({name: part(snap), "live": snap["live"]})


async def serve(client: Any, cluster: str, host: str, port: int, refresh: float, node_timeout: float,
                password: str | None, ready: Any = None) -> None:
    """Run the page and API until SIGTERM/SIGINT; ``ready(port)`` is called once listening."""
    loop = asyncio.get_running_loop()
    live = LiveStatus(client, cluster, loop, refresh, node_timeout, password)
    app = WebApp(live, host, port)
    await app.http.start()
    live.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("web_listening", address=f"{host}:{app.http.port}", cluster=cluster)
    if ready is not None:
        ready(app.http.port)
    try:
        await stop.wait()
    finally:
        app.http.close()
        live.close()
