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

from pathlib import Path

import pytest

from backends.graph import create
from popbridge.contract import Credentials
from tests.backends.live import LiveEnv, read_twice

LIVE = LiveEnv("GRAPH")


@pytest.mark.skipif(
    not LIVE.get("USER"), reason=f"no live Microsoft 365 mailbox ({LIVE.prefix}USER unset)"
)
async def test_a_real_mailbox_lists_exactly_what_retr_sends(tmp_path: Path) -> None:
    client = {"tenant": LIVE.get("TENANT", "organizations") or "organizations"}
    token = await LIVE.token("microsoft-graph", client)
    credentials = Credentials(LIVE.get("USER") or "", token, "oauth2")
    folder = LIVE.get("FOLDER", "inbox")
    backend = create({"type": "graph", "folder": folder, "spool_dir": str(tmp_path)}, source="live")
    first, second = await read_twice(backend, credentials, int(LIVE.get("MESSAGES", "5") or "5"))
    assert [m.size for m in first] == [m.size for m in second]  # kept with the listing
    print(f"live: {len(first)} messages measured and retrieved")
