"""Real POP3 clients through the bridge to the local fake Gmail API: poplib, curl, fetchmail,
mpop and getmail6 each retrieve every message byte for byte, and their deletions reach Gmail
only through QUIT.

This module owns the Gmail counterpart of `tests/e2e/test_jmap_clients.py`. The Gmail API
takes only OAuth2 bearer tokens, so the devices log in to a mapped account with a local
password and the bridge turns the account's refresh token into access tokens at the fake
OAuth2 provider (`devkit.oauth_provider`); the fake Gmail accepts exactly the access tokens
that provider issued and still considers active. The tests every OAuth2-only upstream shares
(among them: devices that bring their own token open only its user's mailbox) run from
`tests.e2e.oauth_suite` through `GmailView`; the ones here are Gmail's own.
"""

from __future__ import annotations

import asyncio
import logging
import poplib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from devkit.dovecot import generate_message, wire_form
from devkit.fake_gmail import FULL, FakeGmail
from devkit.oauth_provider import FakeOAuthProvider
from devkit.servers import Servers
from popbridge.config import MaildropConfig
from popbridge.frontend.server import Pop3Server
from tests.e2e.client_checks import (
    SPECIAL,
)
from tests.e2e.oauth_bridges import (
    LOCAL_PASSWORD,
    LOCAL_USER,
    start_mapped,
    start_passthrough,
    stat,
)
from tests.e2e.oauth_suite import OAuthClientSuite

pytestmark = pytest.mark.clients

UPSTREAM_USER = "alice@example.com"
StartBridge = Callable[..., Awaitable[Pop3Server]]


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeOAuthProvider]:
    with FakeOAuthProvider() as provider:
        yield provider


@pytest.fixture
async def gmail(idp: FakeOAuthProvider) -> AsyncIterator[FakeGmail]:
    def user_of(token: str) -> tuple[str, str] | None:
        return (UPSTREAM_USER, FULL) if idp.active(token) else None

    async with FakeGmail(user_of) as fake:
        yield fake


@pytest.fixture
def expected(gmail: FakeGmail) -> list[bytes]:
    """The inbox: generated messages plus awkward ones, in the CRLF form POP3 sends."""
    messages = [wire_form(generate_message(n, 3000)) for n in range(1, 9)]
    messages += [wire_form(m) for m in SPECIAL]
    gmail.seed(UPSTREAM_USER, messages)
    return messages


@pytest.fixture
async def bridge(gmail: FakeGmail, idp: FakeOAuthProvider) -> AsyncIterator[StartBridge]:
    """Start bridges with one mapped account in front of the fake Gmail API."""
    started: list[Pop3Server] = []

    async def start(
        *, maildrop: MaildropConfig | None = None, refresh: str | None = None
    ) -> Pop3Server:
        settings: dict[str, Any] = {"type": "gmail", "url": gmail.url, "timeout": 10}
        server = await start_mapped(
            settings, idp, UPSTREAM_USER, maildrop=maildrop, refresh_token=refresh
        )
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


def remaining(gmail: FakeGmail, label: str = "INBOX") -> int:
    box = gmail.box(UPSTREAM_USER)
    return sum(1 for m in box.messages.values() if label in m.labels and "TRASH" not in m.labels)


class GmailView:
    """The fake Gmail mailbox as `OAuthClientSuite` asks about it."""

    def __init__(self, gmail: FakeGmail) -> None:
        self._gmail = gmail

    def remaining(self) -> int:
        return remaining(self._gmail)

    def total(self) -> int:
        return len(self._gmail.box(UPSTREAM_USER).messages)

    def all_unread(self) -> bool:  # reading removed no UNREAD
        return all("UNREAD" in m.labels for m in self._gmail.box(UPSTREAM_USER).messages.values())

    def trashed(self) -> list[bytes]:
        messages = self._gmail.box(UPSTREAM_USER).messages.values()
        return [m.raw for m in messages if "TRASH" in m.labels]

    def downloads(self) -> int:
        return self._gmail.downloads


@pytest.fixture
def view(gmail: FakeGmail) -> GmailView:
    return GmailView(gmail)


class TestGmailClients(OAuthClientSuite):
    UPSTREAM_USER = UPSTREAM_USER
    OTHER_USER = "bob@example.com"
    DOWNLOADS_PER_RETR = 1  # no range requests and no copy kept: a RETR downloads again


async def test_a_dropped_connection_deletes_nothing(
    bridge: StartBridge, gmail: FakeGmail, expected: list[bytes]
) -> None:
    server = await bridge()
    host, port = server.addresses[0][:2]

    def dele_then_drop() -> None:
        client = poplib.POP3(host, port, timeout=20)
        client.user(LOCAL_USER)
        client.pass_(LOCAL_PASSWORD)
        client.dele(1)
        client.sock.close()  # no QUIT: RFC 1939 section 6, nothing enters UPDATE

    await asyncio.to_thread(dele_then_drop)
    await asyncio.sleep(0.2)
    assert remaining(gmail) == len(expected)
    assert not any(m == "DELETE" or p.endswith("/batchDelete") for m, p, _ in gmail.requests)


# ------------------------------------------------------------- tokens and refresh


async def test_a_revoked_refresh_token_is_auth_and_logged_by_account(
    bridge: StartBridge, idp: FakeOAuthProvider, caplog: pytest.LogCaptureFixture
) -> None:
    refresh = idp.issue_refresh_token("alice")
    server = await bridge(refresh=refresh)
    idp.revoke(refresh)
    with caplog.at_level(logging.INFO):
        count, why = await asyncio.to_thread(stat, server)
    assert count == -1 and why.startswith(b"-ERR [AUTH]")
    assert LOCAL_USER in caplog.text and refresh not in caplog.text


@pytest.fixture
async def passthrough(gmail: FakeGmail) -> AsyncIterator[Pop3Server]:
    """A bridge whose devices bring their own Gmail token (XOAUTH2 / OAUTHBEARER)."""
    started = Servers()
    yield await start_passthrough(started, {"type": "gmail", "url": gmail.url, "timeout": 10})
    await started.stop()
