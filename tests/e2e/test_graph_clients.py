"""Real POP3 clients through the bridge to the local fake Graph: poplib, curl, fetchmail, mpop
and getmail6 each retrieve every message byte for byte, and their deletions reach Graph only
through QUIT.

This module owns the Graph counterpart of `tests/e2e/test_jmap_clients.py`. Graph takes only
OAuth2 bearer tokens, so the devices log in to a mapped account with a local password and the
bridge turns the account's refresh token into access tokens at the fake OAuth2 provider; the
fake Graph accepts exactly the access tokens that provider issued and still considers active.
The tests every OAuth2-only upstream shares run from `tests.e2e.oauth_suite` through
`GraphView`; the ones here are Graph's own. One test has the fake write each message's MIME
anew (another length) on every download, as Graph may: what curl retrieves still has exactly
the octets LIST announced.
"""

from __future__ import annotations

import asyncio
import poplib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit import clients
from devkit.dovecot import generate_message, wire_form
from devkit.fake_graph import FakeGraph
from devkit.oauth_provider import FakeOAuthProvider
from devkit.servers import Servers
from popbridge.config import MaildropConfig
from popbridge.frontend.server import Pop3Server
from tests.e2e.client_checks import (
    SPECIAL,
)
from tests.e2e.oauth_bridges import (
    refused,
    session,
    start_mapped,
    start_passthrough,
    target,
    told,
)
from tests.e2e.oauth_suite import OAuthClientSuite

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


class GraphView:
    """The fake Graph mailbox as `OAuthClientSuite` asks about it."""

    def __init__(self, graph: FakeGraph) -> None:
        self._graph = graph

    def remaining(self) -> int:
        return remaining(self._graph)

    def total(self) -> int:
        return len(self._graph.messages)

    def all_unread(self) -> bool:
        return not any(m.is_read for m in self._graph.messages)

    def trashed(self) -> list[bytes]:
        return [m.mime for m in self._graph.in_folder("deleteditems")]

    def downloads(self) -> int:
        return self._graph.downloads


@pytest.fixture
def view(graph: FakeGraph) -> GraphView:
    return GraphView(graph)


class TestGraphClients(OAuthClientSuite):
    UPSTREAM_USER = UPSTREAM_USER
    OTHER_USER = "bob@contoso.example"
    DOWNLOADS_PER_RETR = 0  # RETR sends what LIST counted, from the spool


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


# ------------------------------------------------- passthrough of device tokens


@pytest.fixture
async def passthrough(graph: FakeGraph, tmp_path: Path) -> AsyncIterator[Pop3Server]:
    """A bridge whose devices bring their own Graph token (XOAUTH2 / OAUTHBEARER)."""
    settings = {"type": "graph", "url": graph.url, "timeout": 10, "spool_dir": str(tmp_path)}
    started = Servers()
    yield await start_passthrough(started, settings)
    await started.stop()
