"""The Gmail backend against a real Gmail account, only when credentials are given.

This module owns the one test that talks to Google: it runs when the environment names an
account and a way to get a token, and is skipped otherwise (pytest's `-ra` summary says so
and why). It only reads: it lists the configured label, measures the newest few as a
client's LIST would, checks that each has exactly the octets LIST announced, twice (the
second session starts from the listing memory: history.list, no message measured again),
and that TOP returns a prefix. It never disposes of anything, so a token with the
gmail.modify scope is enough.

    POPBRIDGE_GMAIL_LIVE_USER            the account's address (required)
    POPBRIDGE_GMAIL_LIVE_TOKEN           an access token for it, or:
    POPBRIDGE_GMAIL_LIVE_CLIENT_ID       an OAuth client id of a Google Cloud project, with
    POPBRIDGE_GMAIL_LIVE_CLIENT_SECRET   its secret (Desktop app clients have one) and
    POPBRIDGE_GMAIL_LIVE_REFRESH_TOKEN   a refresh token it holds for that account
    POPBRIDGE_GMAIL_LIVE_LABEL           the label to read (default INBOX)
    POPBRIDGE_GMAIL_LIVE_MESSAGES        how many messages to retrieve at most (default 5)
"""

from __future__ import annotations

import os

import pytest

from backends.gmail import create
from popbridge.contract import Credentials
from popbridge.oauth2.providers import parse_provider
from popbridge.oauth2.tokens import refresh
from popbridge.store.listings import MemoryListings
from popbridge.upstream.settings import TableReader
from tests.backends.contract import as_told, read_all

ENV = "POPBRIDGE_GMAIL_LIVE_"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV + name, default)


async def _token() -> str:
    token = _env("TOKEN")
    if token:
        return token
    client_id, refresh_token = _env("CLIENT_ID"), _env("REFRESH_TOKEN")
    if not client_id or not refresh_token:
        pytest.skip(f"no {ENV}TOKEN, nor {ENV}CLIENT_ID with {ENV}REFRESH_TOKEN")
    table = {"client_id": client_id}
    if _env("CLIENT_SECRET"):
        table["client_secret"] = _env("CLIENT_SECRET") or ""
    provider = parse_provider(TableReader(table, source="env", path="live"), "google")
    return (await refresh(provider, refresh_token, deadline=30)).access_token


@pytest.mark.skipif(not _env("USER"), reason=f"no live Gmail account ({ENV}USER unset)")
async def test_a_real_account_lists_exactly_what_retr_sends() -> None:
    user = _env("USER") or ""
    credentials = Credentials(user, await _token(), "oauth2")
    backend = create({"type": "gmail", "label": _env("LABEL", "INBOX")}, source="live")
    memory = MemoryListings().for_account(user)
    limit = int(_env("MESSAGES", "5") or "5")
    listings = []
    for _ in range(2):
        mailbox = await backend.open(credentials)
        try:
            listed = await as_told(mailbox, (await mailbox.list(memory=memory))[-limit:])
            listings.append(listed)
            for entry in listed:
                data = b"".join(await read_all(mailbox, entry.identity))
                assert len(data) == entry.size
                top = b"".join(await read_all(mailbox, entry.identity, body_lines=0))
                assert data.startswith(top) and top.endswith(b"\r\n\r\n")
        finally:
            await mailbox.close()
    first, second = ({m.identity: m.size for m in listed} for listed in listings)
    assert all(second[i] == size for i, size in first.items() if i in second)
    print(f"live: {len(first)} messages measured and retrieved")
    print(f"live: {(await backend.check())[-1]}")
