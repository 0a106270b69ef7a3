"""A one-route HTTP server in the test's own loop that answers whatever a test asks for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web


@asynccontextmanager
async def answering(status: int, body: Any, *, raw: bytes | None = None) -> AsyncIterator[str]:
    """Serve POST / with `status` and JSON `body` (or `raw` bytes); yields the URL."""

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        if raw is not None:
            return web.Response(status=status, body=raw, content_type="text/html")
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()
