"""The Graph backend against a real Microsoft 365 mailbox, only when credentials are given.

This module owns the one test that talks to Microsoft: it runs when the environment names a
mailbox and a way to get a token, and is skipped otherwise (pytest's `-ra` summary, which
the test script shows, says so and why). It reads only: it lists the configured folder,
measures the newest few as a client's LIST would, checks that each has exactly the octets
LIST announced when retrieved, twice (a second session reuses the sizes kept in the listing
memory), and that TOP returns a prefix. It never
disposes of anything.

    POPBRIDGE_GRAPH_LIVE_USER           the mailbox's user principal name (required)
    POPBRIDGE_GRAPH_LIVE_TOKEN          an access token with Mail.ReadWrite and User.Read, or:
    POPBRIDGE_GRAPH_LIVE_CLIENT_ID      an app registration's client id, with
    POPBRIDGE_GRAPH_LIVE_REFRESH_TOKEN  a refresh token it holds for that user, and optionally
    POPBRIDGE_GRAPH_LIVE_TENANT         the tenant (default "organizations")
    POPBRIDGE_GRAPH_LIVE_FOLDER         the folder to read (default "inbox")
    POPBRIDGE_GRAPH_LIVE_MESSAGES       how many messages to retrieve at most (default 5)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backends.graph import create
from popbridge.contract import Credentials
from popbridge.oauth2.providers import parse_provider
from popbridge.oauth2.tokens import refresh
from popbridge.store.listings import MemoryListings
from popbridge.upstream.settings import TableReader
from tests.backends.contract import as_told, read_all

ENV = "POPBRIDGE_GRAPH_LIVE_"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV + name, default)


async def _token() -> str:
    token = _env("TOKEN")
    if token:
        return token
    client_id, refresh_token = _env("CLIENT_ID"), _env("REFRESH_TOKEN")
    if not client_id or not refresh_token:
        pytest.skip(f"no {ENV}TOKEN, nor {ENV}CLIENT_ID with {ENV}REFRESH_TOKEN")
    table = {"client_id": client_id, "tenant": _env("TENANT", "organizations")}
    provider = parse_provider(TableReader(table, source="env", path="live"), "microsoft-graph")
    return (await refresh(provider, refresh_token, deadline=30)).access_token


@pytest.mark.skipif(not _env("USER"), reason=f"no live Microsoft 365 mailbox ({ENV}USER unset)")
async def test_a_real_mailbox_lists_exactly_what_retr_sends(tmp_path: Path) -> None:
    user = _env("USER") or ""
    credentials = Credentials(user, await _token(), "oauth2")
    settings = {"type": "graph", "folder": _env("FOLDER", "inbox"), "spool_dir": str(tmp_path)}
    backend = create(settings, source="live")
    memory = MemoryListings().for_account(user)
    limit = int(_env("MESSAGES", "5") or "5")
    sizes: list[list[int]] = []
    for _ in range(2):
        mailbox = await backend.open(credentials)
        try:
            listed = await as_told(mailbox, (await mailbox.list(memory=memory))[-limit:])
            sizes.append([m.size for m in listed])
            for entry in listed:
                data = b"".join(await read_all(mailbox, entry.identity))
                assert len(data) == entry.size
                top = b"".join(await read_all(mailbox, entry.identity, body_lines=0))
                assert data.startswith(top)
        finally:
            await mailbox.close()
    assert sizes[0] == sizes[1]
    print(f"live: {len(sizes[0])} messages measured and retrieved")
