"""In-process bridges for test fixtures: start each on its config and backend, stop all at the end.

Every fixture that runs `Pop3Server` in the test's own event loop (over the in-memory backend, a
real Dovecot or a real Cyrus) builds its config its own way and then does the same thing: wire
the services, start the server, and stop every server it started when the test ends.
"""

from __future__ import annotations

from popbridge.config import Config
from popbridge.contract import Backend
from popbridge.frontend.server import Pop3Server
from popbridge.session.session import Services
from popbridge.session.throttle import Throttle


class Servers:
    """The bridges one fixture started."""

    def __init__(self) -> None:
        self._started: list[Pop3Server] = []

    async def start(self, config: Config, backend: Backend) -> Pop3Server:
        """Start a bridge serving `config` over `backend`, throttled as `config` says."""
        services = Services(backend=backend, throttle=Throttle(config.server.throttle))
        server = Pop3Server(config, services)
        await server.start()
        self._started.append(server)
        return server

    async def stop(self) -> None:
        for server in self._started:
            await server.stop()
