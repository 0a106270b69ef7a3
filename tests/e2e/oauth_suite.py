"""The real-client tests every OAuth2-only upstream (Graph, Gmail) must pass, written once.

This module owns `OAuthClientSuite`: poplib, curl, fetchmail, mpop and getmail6 retrieve
every message byte for byte through a bridge with one mapped account, reading never marks
a message read, their deletions reach the upstream only through QUIT (RFC 1939 section 6),
a UIDL poll downloads nothing, a revoked access token is refreshed once for a burst of
logins, and a device's own token opens only its own mailbox. A test module mixes it in and
provides the fixtures it names: `bridge` (starts mapped bridges), `passthrough` (a bridge
whose devices bring their own token), `idp`, `expected` (the seeded inbox) and `view`, an
`UpstreamView` of its fake, which says what the upstream now holds in its own terms.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar, Protocol

import pytest

from devkit import clients
from devkit.oauth_provider import FakeOAuthProvider
from popbridge.config import MaildropConfig
from popbridge.contract import Disposition, DispositionKind
from popbridge.frontend.server import Pop3Server
from tests.e2e.client_checks import curl_lists_retrieves_and_uidls, fetchmail, getmail, mpop
from tests.e2e.oauth_bridges import access_token, sizes_counted_once, stat, target, xoauth2

StartBridge = Callable[..., Awaitable[Pop3Server]]


class UpstreamView(Protocol):
    """What a fake upstream holds for the mapped account."""

    def remaining(self) -> int:
        """Messages still in the maildrop folder."""

    def total(self) -> int:
        """Messages anywhere in the account, Trash included."""

    def all_unread(self) -> bool:
        """True when no message was marked read."""

    def trashed(self) -> list[bytes]:
        """The raw octets of each message in Trash."""

    def downloads(self) -> int:
        """Message downloads the fake has served."""


class OAuthClientSuite:
    UPSTREAM_USER: ClassVar[str]  # the mapped account's mailbox
    OTHER_USER: ClassVar[str]  # a mailbox the device's token does not open
    DOWNLOADS_PER_RETR: ClassVar[int]  # 0 where the bridge keeps what it measured

    async def test_a_uidl_poll_downloads_nothing_and_each_size_is_counted_once(
        self, bridge: StartBridge, view: UpstreamView, expected: list[bytes]
    ) -> None:
        await sizes_counted_once(
            await bridge(), expected, view.downloads, per_retr=self.DOWNLOADS_PER_RETR
        )

    async def test_poplib_retrieves_all_then_deletes(
        self, bridge: StartBridge, view: UpstreamView, expected: list[bytes]
    ) -> None:
        server = await bridge()
        fetched = await asyncio.to_thread(clients.poplib_fetch_all, target(server), delete=False)
        assert fetched == expected
        assert view.all_unread()
        fetched = await asyncio.to_thread(clients.poplib_fetch_all, target(server), delete=True)
        assert fetched == expected
        assert view.total() == 0

    async def test_curl_lists_retrieves_and_uidls(
        self, bridge: StartBridge, expected: list[bytes], tmp_path: Path
    ) -> None:
        server = await bridge()
        await curl_lists_retrieves_and_uidls(target(server), expected, tmp_path / "curl")

    async def test_curl_dele_trashes_at_its_quit(
        self, bridge: StartBridge, view: UpstreamView, expected: list[bytes]
    ) -> None:
        server = await bridge(maildrop=MaildropConfig(Disposition(DispositionKind.TRASH)))
        await asyncio.to_thread(clients.curl_command, target(server), "DELE 1")
        assert view.remaining() == len(expected) - 1
        (trashed,) = view.trashed()
        assert b"Subject: test message 1\r\n" in trashed

    @pytest.mark.parametrize("keep", [True, False], ids=["keep", "delete"])
    @pytest.mark.parametrize("client", [fetchmail, mpop], ids=["fetchmail", "mpop-pipelining"])
    async def test_fetchmail_and_mpop(
        self,
        bridge: StartBridge,
        view: UpstreamView,
        expected: list[bytes],
        tmp_path: Path,
        client: Callable[..., Awaitable[list[bytes]]],
        keep: bool,
    ) -> None:
        server = await bridge()
        assert await client(target(server), tmp_path, keep=keep) == expected
        assert view.remaining() == (len(expected) if keep else 0)
        assert view.all_unread()

    async def test_getmail_delete(
        self, bridge: StartBridge, view: UpstreamView, expected: list[bytes], tmp_path: Path
    ) -> None:
        server = await bridge()
        assert await getmail(target(server), tmp_path, delete=True) == expected
        assert view.remaining() == 0

    async def test_a_revoked_access_token_is_refreshed_once_for_a_burst_of_logins(
        self, bridge: StartBridge, idp: FakeOAuthProvider, expected: list[bytes]
    ) -> None:
        server = await bridge()
        assert (await asyncio.to_thread(stat, server))[0] == len(expected)
        refreshes = idp.grants["refresh_token"]
        idp.expire_access_tokens()  # revoked before its expiry: the upstream answers 401
        # the clients get their own threads: the bridge hashes passwords in the default executor
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(8) as pool:
            results = await asyncio.gather(
                *(loop.run_in_executor(pool, stat, server) for _ in range(8))
            )
        # every login got in or was told the maildrop is busy; none was refused its credentials
        assert all(count == len(expected) or b"[IN-USE]" in why for count, why in results)
        assert any(count == len(expected) for count, _ in results)
        assert idp.grants["refresh_token"] == refreshes + 1  # one refresh for the whole burst

    async def test_a_device_token_opens_only_its_own_mailbox(
        self, passthrough: Pop3Server, idp: FakeOAuthProvider, expected: list[bytes]
    ) -> None:
        token = await asyncio.to_thread(access_token, idp, idp.issue_refresh_token("alice"))
        reply, count = await asyncio.to_thread(xoauth2, passthrough, self.UPSTREAM_USER, token)
        assert reply.startswith(b"+OK") and count == len(expected)
        reply, count = await asyncio.to_thread(xoauth2, passthrough, self.OTHER_USER, token)
        assert reply.startswith(b"-ERR [AUTH]") and count == -1
        reply, count = await asyncio.to_thread(
            xoauth2, passthrough, self.UPSTREAM_USER, "expired.1"
        )
        assert reply.startswith(b"-ERR [AUTH]") and count == -1
