"""Fixtures shared by the real-server tests: one Dovecot, one Courier IMAP and one GNU Mailutils
imap4d per test session (each started when a test first needs it), and bridges started
in-process in front of them with the real IMAP backend, found through the backend registry
exactly as `popbridge serve` finds it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from devkit.courier import start_courier
from devkit.dovecot import Dovecot, start_dovecot
from devkit.imap_peer import ImapPeer
from devkit.mailutils import DOMAIN, start_imap4d
from devkit.servers import Servers
from popbridge.config import Config, ListenerConfig, MaildropConfig, ServerConfig
from popbridge.contract import load_backend
from popbridge.frontend.server import Pop3Server
from popbridge.session.throttle import ThrottlePolicy

NO_DELAY = ThrottlePolicy(base_delay=0)
USERS = {"alice": "secret", "bob": "hunter2", "carol": "c4rol pw"}
# imap4d's users live in a virtual domain: its logins are user@domain.
IMAP4D_USERS = {f"{user}@{DOMAIN}": password for user, password in USERS.items()}

StartBridge = Callable[..., Awaitable[Pop3Server]]


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    server = start_dovecot(tmp_path_factory.mktemp("dovecot"), dict(USERS))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def courier() -> Iterator[ImapPeer]:
    server = start_courier(dict(USERS))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def imap4d() -> Iterator[ImapPeer]:
    server = start_imap4d(dict(IMAP4D_USERS))
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
