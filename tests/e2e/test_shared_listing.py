"""Two bridge processes, one PostgreSQL store: one listing memory and one UID map for both.

Logins alternate between the processes while another IMAP client changes the mailbox in
between (an arrival, an expunge, a flag change). Every message keeps its UIDL whichever
process lists it, and no UIDL is ever given to another message (RFC 1939 section 7). A
login on an unchanged mailbox through the other process plans nothing and rewrites
nothing: the UID map's summary and the stored listing are left as the last login left them.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from devkit.dovecot import Dovecot
from devkit.postgres import (
    Postgres,
    create_database,
    drop_database,
    postgres,  # noqa: F401  (the session fixture)
)
from tests.e2e.test_durable_state import USER, Bridge, bridges, uidls_by_message_id  # noqa: F401

pytestmark = pytest.mark.dovecot


def _change(dovecot: Dovecot, step: int) -> None:
    """What another client does between two logins."""
    if step == 0:
        dovecot.append(USER, b"Message-ID: <late@example.org>\r\nSubject: late\r\n\r\nnew\r\n")
        return
    imap = dovecot.imap(USER)
    try:
        imap.select("INBOX")
        if step == 1:
            imap.store("2", "+FLAGS", "\\Deleted")
            imap.expunge()
        else:
            imap.store("1", "+FLAGS", "\\Seen")
    finally:
        imap.logout()


async def _kept(dsn: str) -> list[Any]:
    connection = await asyncpg.connect(dsn)
    try:
        summary = await connection.fetchrow("SELECT digest, planned FROM uidl_summaries")
        listing = await connection.fetchrow("SELECT state, updated FROM listings")
        return [*summary, *listing]
    finally:
        await connection.close()


def test_two_processes_list_and_number_one_mailbox_alike(
    dovecot: Dovecot,
    postgres: Postgres,  # noqa: F811
    tmp_path: Path,
    bridges: list[Bridge],  # noqa: F811
) -> None:
    dovecot.reset_mailbox(USER)
    dovecot.seed_generated(USER, 4, 600)
    database = asyncio.run(create_database(postgres))
    try:
        store = f'type = "postgres"\ndsn = "{postgres.dsn(database)}"'
        pair = [Bridge(tmp_path, dovecot, store, name).start() for name in ("one", "two")]
        bridges += pair
        password = dovecot.users[USER]
        known: dict[str, str] = {}
        for step in range(4):
            client = pair[step % 2].login(password)
            listed = uidls_by_message_id(client)
            client.quit()
            assert all(known.get(mid, uidl) == uidl for mid, uidl in listed.items())
            gone = set(known) - set(listed)
            assert not {known[mid] for mid in gone} & set(listed.values())  # never reused
            known.update(listed)
            if step < 3:
                _change(dovecot, step)
        before = asyncio.run(_kept(postgres.dsn(database)))
        time.sleep(1.1)  # a plan now would record another second
        client = pair[0].login(password)
        assert uidls_by_message_id(client) == listed
        client.quit()
        assert asyncio.run(_kept(postgres.dsn(database))) == before
    finally:
        for bridge in bridges:
            bridge.stop()
        asyncio.run(drop_database(postgres, database))
