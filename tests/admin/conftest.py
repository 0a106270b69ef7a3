"""A bridge in front of the real Dovecot with its admin listener, both on free loopback ports,
wired by `build_services` exactly as `popbridge serve` wires them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest

from devkit.dovecot import Dovecot
from popbridge.admin import AdminContext, AdminServer
from popbridge.app import build_services
from popbridge.config import AdminConfig, Config, ListenerConfig, ServerConfig
from popbridge.contract import Backend
from popbridge.frontend.server import Pop3Server
from tests.conftest import NO_DELAY, imap_settings

TOKEN = "adm1n-T0ken-never-shown-4f9c2e"


class CountingBackend:
    """The real backend, counting how often the admin probes it."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.checks = 0

    async def open(self, credentials: Any) -> Any:
        return await self.inner.open(credentials)

    async def check(self) -> list[str]:
        self.checks += 1
        return await self.inner.check()


@dataclass
class Running:
    pop3: Pop3Server
    admin: AdminServer
    backend: CountingBackend
    token: str | None

    @property
    def pop_port(self) -> int:
        return self.pop3.addresses[0][1]

    @property
    def url(self) -> str:
        host, port = self.admin.addresses[0]
        return f"http://{host}:{port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                self.url + path, headers=kwargs.pop("headers", self.headers()), **kwargs
            ) as response,
        ):
            return response.status, await response.text()


StartAdmin = Callable[..., Awaitable[Running]]


@pytest.fixture
async def admin_bridge(dovecot: Dovecot) -> AsyncIterator[StartAdmin]:
    started: list[tuple[Pop3Server, AdminServer, Any]] = []

    async def start(*, token: str | None = TOKEN, server: ServerConfig | None = None,
                    tls: ListenerConfig | None = None,
                    imap_port: int | None = None, **admin: Any) -> Running:  # fmt: skip
        settings = imap_settings(dovecot, **({"port": imap_port} if imap_port else {}))
        config = Config(
            source="test", backend_type="imap", backend_settings=settings,
            listeners=(ListenerConfig(host="127.0.0.1", port=0, plaintext_auth=True),)
            + ((tls,) if tls else ()),
            server=server or ServerConfig(throttle=NO_DELAY),
            admin=AdminConfig(enabled=True, port=0, token=token, **admin),
            store_settings={"type": "memory"},
        )  # fmt: skip
        services, store = await build_services(config)
        backend = CountingBackend(services.backend)
        services = replace(services, backend=backend)
        pop3 = Pop3Server(config, services)
        await pop3.start()
        admin_server = AdminServer(AdminContext(config, pop3, backend, store))
        await admin_server.start()
        started.append((pop3, admin_server, store))
        await asyncio.sleep(0)  # let the first probe begin
        return Running(pop3, admin_server, backend, token)

    yield start
    for pop3, admin_server, store in started:
        await admin_server.stop()
        await pop3.stop()
        await store.close()


async def wait_ready(running: Running) -> None:
    for _ in range(200):
        if not running.admin.health.readiness():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(running.admin.health.readiness())


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]]


async def pop_session(port: int, *lines: bytes) -> Streams:
    """Connect, send `lines` one at a time, return the open streams and each reply line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = [await reader.readline()]
    for line in lines:
        writer.write(line + b"\r\n")
        await writer.drain()
        replies.append(await reader.readline())
    return reader, writer, replies
