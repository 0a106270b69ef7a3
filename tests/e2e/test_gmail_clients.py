"""Real POP3 clients through the bridge to the local fake Gmail API: poplib, curl, fetchmail,
mpop and getmail6 each retrieve every message byte for byte, and their deletions reach Gmail
only through QUIT.

This module owns the Gmail counterpart of `tests/e2e/test_jmap_clients.py`. The Gmail API
takes only OAuth2 bearer tokens, so the devices log in to a mapped account with a local
password and the bridge turns the account's refresh token into access tokens at the fake
OAuth2 provider (`devkit.oauth_provider`); the fake Gmail accepts exactly the access tokens
that provider issued and still considers active. Devices that bring their own token
(XOAUTH2) open only the mailbox of the token's user.
"""

from __future__ import annotations

import asyncio
import logging
import poplib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from devkit import clients
from devkit.dovecot import generate_message, wire_form
from devkit.fake_gmail import FULL, FakeGmail
from devkit.oauth_provider import FakeOAuthProvider
from devkit.servers import Servers
from popbridge.config import MaildropConfig
from popbridge.contract import Disposition, DispositionKind
from popbridge.frontend.server import Pop3Server
from tests.e2e.client_checks import (
    SPECIAL,
    curl_lists_retrieves_and_uidls,
    fetchmail,
    getmail,
    mpop,
)
from tests.e2e.oauth_bridges import (
    LOCAL_PASSWORD,
    LOCAL_USER,
    access_token,
    sizes_counted_once,
    start_mapped,
    start_passthrough,
    stat,
    target,
    xoauth2,
)

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


def unread(gmail: FakeGmail) -> bool:
    return all("UNREAD" in m.labels for m in gmail.box(UPSTREAM_USER).messages.values())


async def test_a_uidl_poll_downloads_nothing_and_each_size_is_counted_once(
    bridge: StartBridge, gmail: FakeGmail, expected: list[bytes]
) -> None:
    # Gmail has no range requests and the bridge keeps no copy: a RETR downloads again
    await sizes_counted_once(await bridge(), expected, lambda: gmail.downloads, per_retr=1)


async def test_poplib_retrieves_all_then_deletes(
    bridge: StartBridge, gmail: FakeGmail, expected: list[bytes]
) -> None:
    server = await bridge()
    fetched = await asyncio.to_thread(clients.poplib_fetch_all, target(server), delete=False)
    assert fetched == expected
    assert unread(gmail)  # reading removed no UNREAD
    fetched = await asyncio.to_thread(clients.poplib_fetch_all, target(server), delete=True)
    assert fetched == expected
    assert gmail.box(UPSTREAM_USER).messages == {}


async def test_curl_lists_retrieves_and_uidls(
    bridge: StartBridge, expected: list[bytes], tmp_path: Path
) -> None:
    server = await bridge()
    await curl_lists_retrieves_and_uidls(target(server), expected, tmp_path / "curl")


async def test_curl_dele_trashes_at_its_quit(
    bridge: StartBridge, gmail: FakeGmail, expected: list[bytes]
) -> None:
    server = await bridge(maildrop=MaildropConfig(Disposition(DispositionKind.TRASH)))
    await asyncio.to_thread(clients.curl_command, target(server), "DELE 1")
    assert remaining(gmail) == len(expected) - 1
    (trashed,) = [m for m in gmail.box(UPSTREAM_USER).messages.values() if "TRASH" in m.labels]
    assert b"Subject: test message 1\r\n" in trashed.raw


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "nokeep"])
async def test_fetchmail(
    bridge: StartBridge, gmail: FakeGmail, expected: list[bytes], tmp_path: Path, keep: bool
) -> None:
    server = await bridge()
    assert await fetchmail(target(server), tmp_path, keep=keep) == expected
    assert remaining(gmail) == (len(expected) if keep else 0)


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "delete"])
async def test_mpop_pipelining(
    bridge: StartBridge, gmail: FakeGmail, expected: list[bytes], tmp_path: Path, keep: bool
) -> None:
    server = await bridge()
    assert await mpop(target(server), tmp_path, keep=keep) == expected
    assert remaining(gmail) == (len(expected) if keep else 0)


async def test_getmail_delete(
    bridge: StartBridge, gmail: FakeGmail, expected: list[bytes], tmp_path: Path
) -> None:
    server = await bridge()
    assert await getmail(target(server), tmp_path, delete=True) == expected
    assert remaining(gmail) == 0


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


async def test_a_revoked_access_token_is_refreshed_once_for_a_burst_of_logins(
    bridge: StartBridge, idp: FakeOAuthProvider, expected: list[bytes]
) -> None:
    server = await bridge()
    assert (await asyncio.to_thread(stat, server))[0] == len(expected)
    refreshes = idp.grants["refresh_token"]
    idp.expire_access_tokens()  # revoked before its expiry: Gmail answers 401
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(8) as pool:
        results = await asyncio.gather(
            *(loop.run_in_executor(pool, stat, server) for _ in range(8))
        )
    # every login got in or was told the maildrop is busy; none was refused its credentials
    assert all(count == len(expected) or b"[IN-USE]" in why for count, why in results)
    assert idp.grants["refresh_token"] == refreshes + 1  # one refresh for the whole burst


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


async def test_a_device_token_opens_only_its_own_mailbox(
    passthrough: Pop3Server, idp: FakeOAuthProvider, expected: list[bytes]
) -> None:
    token = await asyncio.to_thread(access_token, idp, idp.issue_refresh_token("alice"))
    reply, count = await asyncio.to_thread(xoauth2, passthrough, UPSTREAM_USER, token)
    assert reply.startswith(b"+OK") and count == len(expected)
    reply, count = await asyncio.to_thread(xoauth2, passthrough, "bob@example.com", token)
    assert reply.startswith(b"-ERR [AUTH]") and count == -1
    reply, count = await asyncio.to_thread(xoauth2, passthrough, UPSTREAM_USER, "expired.1")
    assert reply.startswith(b"-ERR [AUTH]") and count == -1
