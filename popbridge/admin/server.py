"""The admin listener: `/healthz`, `/readyz`, `/metrics` and the status page (`/`).

It serves GET and HEAD only (anything else on a known path is 405, an unknown path 404),
reads no request body (a request that announces one is refused with 413 and the connection
closed), keeps request lines and headers small, and sends headers that stop a browser from
framing, sniffing or caching its pages. With a token configured every path but `/healthz`
needs `Authorization: Bearer <token>`, compared in constant time; a refusal never echoes
what was sent.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from popbridge.admin import status
from popbridge.admin.health import Health
from popbridge.admin.page import PageData, render
from popbridge.config import Config
from popbridge.contract import Backend
from popbridge.frontend.server import Pop3Server
from popbridge.store import Store
from popbridge.telemetry.metrics import REGISTRY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Small but ample for a browser or a Prometheus scrape with a bearer token.
LIMITS: dict[str, Any] = {"max_line_size": 4096, "max_field_size": 4096, "max_headers": 64}
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
}
OPEN_PATHS = frozenset({"/healthz"})


@dataclass(frozen=True, slots=True)
class AdminContext:
    """What the admin listener looks at: the config, the POP3 server and shared services."""

    config: Config
    pop3: Pop3Server
    backend: Backend
    store: Store
    authenticator: object = None


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type="application/json")


class AdminServer:
    """Runs the admin listener until `stop`."""

    def __init__(self, context: AdminContext) -> None:
        self._context = context
        self._settings = context.config.admin
        self.health = Health(
            self._settings, upstream=context.backend.check, store=context.store.accounts.names,
            listening=lambda: bool(context.pop3.addresses), draining=lambda: context.pop3.draining,
        )  # fmt: skip
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        server = self._site._server if self._site is not None else None
        return [s.getsockname()[:2] for s in getattr(server, "sockets", None) or ()]

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._status)
        return app

    async def start(self) -> None:
        # No access log: a line per probe and scrape says nothing the metrics do not.
        self._runner = web.AppRunner(self.application(), access_log=None, **LIMITS)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._settings.host, self._settings.port)
        await self._site.start()
        self.health.start()

    async def stop(self) -> None:
        await self.health.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await self._checked(request, handler)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def _checked(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            response = _json({"error": "request bodies are not accepted"}, 413)
            response.force_close()
            return response
        if request.path not in OPEN_PATHS and not self._authorized(request):
            response = _json({"error": "a bearer token is required"}, 401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="popbridge admin"'
            return response
        try:
            return await handler(request)
        except web.HTTPException as error:  # 404, 405: a fixed text, not the request's
            response = _json({"error": error.reason}, error.status)
            if "Allow" in error.headers:  # RFC 9110 §15.5.6: a 405 names the methods
                response.headers["Allow"] = error.headers["Allow"]
            return response

    def _authorized(self, request: web.Request) -> bool:
        token = self._settings.token
        if token is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # RFC 6750 section 2.1: the scheme is case-insensitive; the comparison is constant-time
        expected = token.encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        reasons = self.health.readiness()
        if reasons:
            return _json({"status": "not ready", "reasons": reasons}, 503)
        return _json({"status": "ready"})

    async def _metrics(self, request: web.Request) -> web.Response:
        status.certificates(self._context.config)  # the expiry gauges, as the files are now
        self.health.readiness()  # the ready gauge
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status(self, request: web.Request) -> web.Response:
        context = self._context
        data = PageData(
            sessions=context.pop3.board.entries(),
            probes=self.health.results,
            not_ready=self.health.readiness(),
            certificates=status.certificates(context.config),
            accounts=await status.accounts(context.store.accounts, context.authenticator),
            now=status.now(),
        )
        return web.Response(text=render(data), content_type="text/html", charset="utf-8")
