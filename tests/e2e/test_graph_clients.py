"""Real POP3 clients through the bridge to the local fake Graph: poplib, curl, fetchmail, mpop
and getmail6 each retrieve every message byte for byte, and their deletions reach Graph only
through QUIT.

This module owns the Graph counterpart of `tests/e2e/test_jmap_clients.py`. Graph takes only
OAuth2 bearer tokens, so the devices log in to a mapped account with a local password and the
bridge turns the account's refresh token into access tokens at the fake OAuth2 provider; the
fake Graph accepts exactly the access tokens that provider issued and still considers active.
One test has the fake write each message's MIME anew (another length) on every download, as
Graph may: what curl retrieves still has exactly the octets LIST announced.
"""

from __future__ import annotations

import asyncio
import poplib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from devkit import clients
from devkit.dovecot import generate_message, wire_form
from devkit.fake_graph import FakeGraph
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
    access_token,
    refused,
    session,
    sizes_counted_once,
    start_mapped,
    start_passthrough,
    stat,
    target,
    told,
    xoauth2,
)

pytestmark = pytest.mark.clients

UPSTREAM_USER = "alice@contoso.example"
StartBridge = Callable[..., Awaitable[Pop3Server]]


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeOAuthProvider]:
    with FakeOAuthProvider() as provider:
        yield provider


@pytest.fixture
async def graph(idp: FakeOAuthProvider) -> AsyncIterator[FakeGraph]:
    def user_of(token: str) -> str | None:
        return UPSTREAM_USER if idp.active(token) else None

    async with FakeGraph(user_of) as fake:
        yield fake


@pytest.fixture
def expected(graph: FakeGraph) -> list[bytes]:
    """The inbox: generated messages plus awkward ones, in the CRLF form POP3 sends."""
    messages = [wire_form(generate_message(n, 3000)) for n in range(1, 9)]
    messages += [wire_form(m) for m in SPECIAL]
    graph.seed(messages)
    return messages


@pytest.fixture
async def bridge(
    graph: FakeGraph, idp: FakeOAuthProvider, tmp_path: Path
) -> AsyncIterator[StartBridge]:
    """Start bridges with one mapped account in front of the fake Graph."""
    started: list[Pop3Server] = []

    async def start(*, maildrop: MaildropConfig | None = None, **overrides: Any) -> Pop3Server:
        settings: dict[str, Any] = {"type": "graph", "url": graph.url, "timeout": 10,
                                    "spool_dir": str(tmp_path)} | overrides  # fmt: skip
        server = await start_mapped(settings, idp, UPSTREAM_USER, maildrop=maildrop)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


def remaining(graph: FakeGraph, folder: str = "inbox") -> int:
    return len(graph.in_folder(folder))


async def test_poplib_retrieves_all_then_deletes(
    bridge: StartBridge, graph: FakeGraph, expected: list[bytes]
) -> None:
    server = await bridge()
    fetched = await asyncio.to_thread(clients.poplib_fetch_all, target(server), delete=False)
    assert fetched == expected
    assert not any(m.is_read for m in graph.messages)  # reading set no isRead
    fetched = await asyncio.to_thread(clients.poplib_fetch_all, target(server), delete=True)
    assert fetched == expected
    assert graph.messages == []


async def test_curl_lists_retrieves_and_uidls(
    bridge: StartBridge, expected: list[bytes], tmp_path: Path
) -> None:
    server = await bridge()
    await curl_lists_retrieves_and_uidls(target(server), expected, tmp_path / "curl")


async def test_curl_gets_the_listed_octets_when_mime_is_regenerated(
    bridge: StartBridge, graph: FakeGraph, expected: list[bytes], tmp_path: Path
) -> None:
    graph.regenerate = True
    server = await bridge()
    listing = await asyncio.to_thread(clients.curl_list, target(server))
    sizes = [int(size) for size in listing.split()[1::2]]
    retrieved = await asyncio.to_thread(
        clients.curl_retr_all, target(server), len(expected), tmp_path / "curl"
    )
    assert [len(m) for m in retrieved] != [len(m) for m in expected]  # it was regenerated
    assert [len(m) for m in retrieved] == sizes  # each session measures, then sends that


async def test_a_uidl_poll_downloads_nothing_and_each_size_is_counted_once(
    bridge: StartBridge, graph: FakeGraph, expected: list[bytes]
) -> None:
    # RETR sends what LIST counted, from the spool
    await sizes_counted_once(await bridge(), expected, lambda: graph.downloads, per_retr=0)


@pytest.mark.parametrize("how", ["stall", "cut"])
async def test_a_download_that_fails_is_an_error_never_a_wrong_size(
    bridge: StartBridge, graph: FakeGraph, expected: list[bytes], how: str
) -> None:
    big = wire_form(generate_message(99, 200_000))  # more than the fake's first piece
    graph.seed([big])
    graph.misbehave = how
    graph.concurrency = 10  # each stalled download stays open in the fake, holding a slot
    server = await bridge(timeout=0.5)
    last = len(expected) + 1

    def poll(client: poplib.POP3) -> tuple[list[bytes], list[tuple[bytes, bytes, int]]]:
        failed = [refused(client.stat), refused(client.list), refused(lambda: client.list(last))]
        failed.append(refused(lambda: client.retr(last)))
        return failed, told(client, [1])

    _, (failed, sent) = await asyncio.to_thread(session, server, poll)
    assert all(reply.startswith(b"-ERR [SYS/TEMP]") for reply in failed), failed
    ((reply, data, listed),) = sent
    assert data == expected[0] and reply == f"+OK {listed} octets".encode()


async def test_a_message_deleted_before_its_size_is_asked_for_is_gone(
    bridge: StartBridge, graph: FakeGraph, expected: list[bytes]
) -> None:
    server = await bridge()

    def poll(client: poplib.POP3) -> tuple[bytes, list[tuple[bytes, bytes, int]]]:
        graph.remove(graph.in_folder("inbox")[0])  # by another client, after the login
        return refused(lambda: client.retr(1)), told(client, [2])

    _, (gone, sent) = await asyncio.to_thread(session, server, poll)
    assert gone.startswith(b"-ERR")
    ((reply, data, listed),) = sent
    assert data == expected[1] and reply == f"+OK {listed} octets".encode()


async def test_curl_dele_moves_to_deleted_items_at_its_quit(
    bridge: StartBridge, graph: FakeGraph, expected: list[bytes]
) -> None:
    server = await bridge(maildrop=MaildropConfig(Disposition(DispositionKind.TRASH)))
    await asyncio.to_thread(clients.curl_command, target(server), "DELE 1")
    assert remaining(graph) == len(expected) - 1
    (trashed,) = graph.in_folder("deleteditems")
    assert b"Subject: test message 1\r\n" in trashed.mime


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "nokeep"])
async def test_fetchmail(
    bridge: StartBridge, graph: FakeGraph, expected: list[bytes], tmp_path: Path, keep: bool
) -> None:
    server = await bridge()
    assert await fetchmail(target(server), tmp_path, keep=keep) == expected
    assert remaining(graph) == (len(expected) if keep else 0)
    assert not any(m.is_read for m in graph.messages)


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "delete"])
async def test_mpop_pipelining(
    bridge: StartBridge, graph: FakeGraph, expected: list[bytes], tmp_path: Path, keep: bool
) -> None:
    server = await bridge()
    assert await mpop(target(server), tmp_path, keep=keep) == expected
    assert remaining(graph) == (len(expected) if keep else 0)


async def test_getmail_delete(
    bridge: StartBridge, graph: FakeGraph, expected: list[bytes], tmp_path: Path
) -> None:
    server = await bridge()
    assert await getmail(target(server), tmp_path, delete=True) == expected
    assert remaining(graph) == 0


# ------------------------------------------------- passthrough of device tokens


@pytest.fixture
async def passthrough(graph: FakeGraph, tmp_path: Path) -> AsyncIterator[Pop3Server]:
    """A bridge whose devices bring their own Graph token (XOAUTH2 / OAUTHBEARER)."""
    settings = {"type": "graph", "url": graph.url, "timeout": 10, "spool_dir": str(tmp_path)}
    started = Servers()
    yield await start_passthrough(started, settings)
    await started.stop()


async def test_a_device_token_opens_only_its_own_mailbox(
    passthrough: Pop3Server, graph: FakeGraph, idp: FakeOAuthProvider, expected: list[bytes]
) -> None:
    refresh = idp.issue_refresh_token("alice")
    token = await asyncio.to_thread(access_token, idp, refresh)
    reply, count = await asyncio.to_thread(xoauth2, passthrough, UPSTREAM_USER, token)
    assert reply.startswith(b"+OK") and count == len(expected)
    reply, count = await asyncio.to_thread(xoauth2, passthrough, "bob@contoso.example", token)
    assert reply.startswith(b"-ERR [AUTH]") and count == -1
    reply, count = await asyncio.to_thread(xoauth2, passthrough, UPSTREAM_USER, "expired.1")
    assert reply.startswith(b"-ERR [AUTH]") and count == -1


async def test_a_revoked_access_token_is_refreshed_once_for_a_burst_of_logins(
    bridge: StartBridge, graph: FakeGraph, idp: FakeOAuthProvider, expected: list[bytes]
) -> None:
    server = await bridge()
    assert (await asyncio.to_thread(stat, server))[0] == len(expected)
    refreshes = idp.grants["refresh_token"]
    idp.expire_access_tokens()  # revoked before its expiry: Graph answers 401
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
