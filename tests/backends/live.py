"""What the live tests against real hosted mailboxes (Microsoft 365, Gmail) share.

This module owns `LiveEnv` (the `POPBRIDGE_<NAME>_LIVE_*` variables a live test reads, and
the access token they lead to: given directly, or refreshed with the provider's client) and
`read_twice`: two sessions on one listing memory that each list, measure the newest few
messages as a client's LIST would, and check that RETR sends exactly the octets LIST told
and that TOP returns a prefix. Nothing here disposes of anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

from popbridge.contract import Backend, Credentials, RemoteMessage
from popbridge.oauth2.providers import parse_provider
from popbridge.oauth2.tokens import refresh
from popbridge.store.listings import MemoryListings
from popbridge.upstream.settings import TableReader
from tests.backends.contract import as_told, read_all


class LiveEnv:
    """The environment of one live test: `POPBRIDGE_<name>_LIVE_<key>`."""

    def __init__(self, name: str) -> None:
        self.prefix = f"POPBRIDGE_{name}_LIVE_"

    def get(self, key: str, default: str | None = None) -> str | None:
        return os.environ.get(self.prefix + key, default)

    async def token(self, provider: str, client: Mapping[str, str]) -> str:
        """`TOKEN`, or one refreshed from `REFRESH_TOKEN` with the client `CLIENT_ID` plus
        `client` (other provider keys); skips the test when neither is given."""
        token = self.get("TOKEN")
        if token:
            return token
        client_id, refresh_token = self.get("CLIENT_ID"), self.get("REFRESH_TOKEN")
        if not client_id or not refresh_token:
            p = self.prefix
            pytest.skip(f"no {p}TOKEN, nor {p}CLIENT_ID with {p}REFRESH_TOKEN")
        table = {"client_id": client_id, **client}
        found = parse_provider(TableReader(table, source="env", path="live"), provider)
        return (await refresh(found, refresh_token, deadline=30)).access_token


async def read_twice(
    backend: Backend, credentials: Credentials, limit: int
) -> list[list[RemoteMessage]]:
    """The newest `limit` messages as two sessions told them, each retrieved and checked."""
    memory = MemoryListings().for_account(credentials.user)
    told: list[list[RemoteMessage]] = []
    for _ in range(2):
        mailbox = await backend.open(credentials)
        try:
            listed = await as_told(mailbox, (await mailbox.list(memory=memory))[-limit:])
            told.append(listed)
            for entry in listed:
                data = b"".join(await read_all(mailbox, entry.identity))
                assert len(data) == entry.size  # RFC 1939 section 11
                top = b"".join(await read_all(mailbox, entry.identity, body_lines=0))
                assert data.startswith(top) and top.endswith(b"\r\n\r\n")
        finally:
            await mailbox.close()
    return told
