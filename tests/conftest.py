"""Fixtures shared by the real-server tests: one Dovecot per test session, and bridges
started in-process in front of it with the real IMAP backend, found through the
backend registry exactly as `popbridge serve` finds it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from devkit.dovecot import Dovecot, ensure_installed, start_dovecot
from devkit.servers import Servers
from popbridge.config import Config, ListenerConfig, MaildropConfig, ServerConfig
from popbridge.contract import load_backend
from popbridge.frontend.server import Pop3Server
from popbridge.session.throttle import ThrottlePolicy

NO_DELAY = ThrottlePolicy(base_delay=0)
USERS = {"alice": "secret", "bob": "hunter2", "carol": "c4rol pw"}

StartBridge = Callable[..., Awaitable[Pop3Server]]


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    ensure_installed()
    server = start_dovecot(tmp_path_factory.mktemp("dovecot"), dict(USERS))
    yield server
    server.stop()


@pytest.fixture
def mailbox(dovecot: Dovecot) -> Dovecot:
    """The Dovecot with alice's mailbox emptied: every test starts from a known state."""
    dovecot.reset_mailbox("alice")
    return dovecot


def imap_settings(dovecot: Dovecot, **overrides: Any) -> dict[str, Any]:
    """Backend settings for the plain IMAP port on loopback, with a short deadline."""
    return {
        "type": "imap", "host": dovecot.host, "port": dovecot.imap_port, "tls": "none",
        "timeout": 10, **overrides,
    }  # fmt: skip


@pytest.fixture
async def bridge(dovecot: Dovecot) -> AsyncIterator[StartBridge]:
    """Start bridges on free ports; all are stopped when the test ends."""
    started = Servers()

    async def start(
        *,
        maildrop: MaildropConfig | None = None,
        server: ServerConfig | None = None,
        plaintext_auth: bool = True,
        listeners: tuple[ListenerConfig, ...] | None = None,
        **backend: Any,
    ) -> Pop3Server:
        settings = imap_settings(dovecot, **backend)
        default = ListenerConfig(host="127.0.0.1", port=0, plaintext_auth=plaintext_auth)
        config = Config(
            source="test", backend_type="imap", backend_settings=settings,
            listeners=listeners or (default,),
            server=server or ServerConfig(throttle=NO_DELAY),
            maildrop=maildrop or MaildropConfig(),
        )  # fmt: skip
        return await started.start(config, load_backend("imap", settings, source="test"))

    yield start
    await started.stop()
