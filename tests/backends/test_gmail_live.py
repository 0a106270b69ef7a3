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

import pytest

from backends.gmail import create
from popbridge.contract import Credentials
from tests.backends.live import LiveEnv, read_twice

LIVE = LiveEnv("GMAIL")


@pytest.mark.skipif(not LIVE.get("USER"), reason=f"no live Gmail account ({LIVE.prefix}USER unset)")
async def test_a_real_account_lists_exactly_what_retr_sends() -> None:
    secret = LIVE.get("CLIENT_SECRET")
    token = await LIVE.token("google", {"client_secret": secret} if secret else {})
    credentials = Credentials(LIVE.get("USER") or "", token, "oauth2")
    backend = create({"type": "gmail", "label": LIVE.get("LABEL", "INBOX")}, source="live")
    listings = await read_twice(backend, credentials, int(LIVE.get("MESSAGES", "5") or "5"))
    first, second = ({m.identity: m.size for m in listed} for listed in listings)
    assert all(second[i] == size for i, size in first.items() if i in second)
    print(f"live: {len(first)} messages measured and retrieved")
    print(f"live: {(await backend.check())[-1]}")
