"""JMAP UPDATE changes nothing outside the maildrop, whatever other clients did meanwhile.

This module owns the tests of `backends.jmap.dispose` against what another client does to the
same account: in JMAP one Email can be in several Mailboxes (RFC 8621 section 4.1.1), and
Cyrus shows an IMAP COPY as the same Email in two Mailboxes. A message copied to another
folder and DELE'd over POP3 stays in that folder; one moved away by another client after the
listing is left exactly where it went, for every disposition. Against the real Cyrus, and
against `devkit.fake_jmap` for the change that lands between UPDATE's read and its write.
"""

from __future__ import annotations

import asyncio
import poplib
from collections.abc import Iterator

import pytest

from backends.jmap import create
from devkit import fake_jmap
from devkit.cyrus import Cyrus, start_cyrus
from devkit.fake_jmap import FakeEmail, FakeJmap
from popbridge.contract import Backend, Credentials, Disposition, DispositionKind
from tests.backends.bridges import jmap_bridge
from tests.backends.contract import by_subject, message

pytestmark = pytest.mark.cyrus

USER, PASSWORD = "erin", "3rin pw"
CREDENTIALS = Credentials(USER, PASSWORD)
DISPOSITIONS = [
    Disposition(DispositionKind.EXPUNGE),
    Disposition(DispositionKind.TRASH),
    Disposition(DispositionKind.MOVE, folder="Trash"),
    Disposition(DispositionKind.SEEN),
    Disposition(DispositionKind.KEYWORD, keyword="popbridge-done"),
]


@pytest.fixture(scope="module")
def cyrus() -> Iterator[Cyrus]:
    server = start_cyrus({USER: PASSWORD})
    yield server
    server.stop()


@pytest.fixture
def erin(cyrus: Cyrus) -> Cyrus:
    cyrus.reset_mailbox(USER)
    return cyrus


def backend(cyrus: Cyrus) -> Backend:
    table = {"type": "jmap", "url": cyrus.http_url, "timeout": 10}
    return create(table, source="test.toml")


def imap(cyrus: Cyrus, verb: str, subject: str, folder: str) -> None:
    """Another client: COPY or MOVE (RFC 6851) the INBOX message with `subject` to `folder`."""
    with cyrus.session(USER) as client:
        client.select('"INBOX"')
        _, found = client.uid("SEARCH", "HEADER", "Subject", f'"{subject}"')
        (uid,) = found[0].split()
        typ, data = client.uid(verb, uid.decode(), f'"{folder}"')
        assert typ == "OK", data


def subjects(cyrus: Cyrus, folder: str) -> dict[str, frozenset[str]]:
    return {m.subject: m.flags for m in cyrus.stored(USER, folder)}


# --------------------------------------------------- DELE over POP3, a copy elsewhere


def dele_all_over_pop3(port: int) -> int:
    client = poplib.POP3("127.0.0.1", port, timeout=30)
    try:
        client.user(USER)
        client.pass_(PASSWORD)
        count, _ = client.stat()
        for number in range(1, count + 1):
            client.dele(number)
        client.quit()
    finally:
        client.close()
    return int(count)


async def test_dele_over_pop3_leaves_a_copy_in_another_folder(erin: Cyrus) -> None:
    erin.seed(USER, [message("copied"), message("alone")])
    imap(erin, "COPY", "copied", "Archive")
    async with jmap_bridge(erin.http_url) as port:  # disposition: expunge
        assert await asyncio.to_thread(dele_all_over_pop3, port) == 2
    assert subjects(erin, "INBOX") == {}
    assert set(subjects(erin, "Archive")) == {"copied"}  # RFC 8621 4.1.1: only left INBOX


# -------------------------------------- what another client did after the listing


@pytest.mark.parametrize("how", DISPOSITIONS, ids=lambda d: d.kind.value)
async def test_a_message_moved_away_after_the_listing_is_untouched(
    erin: Cyrus, how: Disposition
) -> None:
    erin.seed(USER, [message("moved away"), message("disposed")])
    mailbox = await backend(erin).open(CREDENTIALS)
    try:
        listed = await by_subject(mailbox)
        imap(erin, "MOVE", "moved away", "Archive")
        result = await mailbox.dispose([m.identity for m in listed.values()], how)
    finally:
        await mailbox.close()
    assert result.ok  # gone from the maildrop: done, as for IMAP
    archive = subjects(erin, "Archive")
    assert set(archive) == {"moved away"}
    assert archive["moved away"] == frozenset()  # no \Seen, no keyword, not \Deleted
    if how.kind in (DispositionKind.TRASH, DispositionKind.MOVE):
        assert set(subjects(erin, "Trash")) == {"disposed"}  # only the maildrop's message
    else:
        assert subjects(erin, "Trash") == {}


@pytest.mark.parametrize("how", DISPOSITIONS[:3], ids=lambda d: d.kind.value)
async def test_a_message_also_in_another_folder_stays_there(erin: Cyrus, how: Disposition) -> None:
    erin.seed(USER, [message("copied"), message("alone")])
    imap(erin, "COPY", "copied", "Archive")
    mailbox = await backend(erin).open(CREDENTIALS)
    try:
        listed = await by_subject(mailbox)
        result = await mailbox.dispose([m.identity for m in listed.values()], how)
    finally:
        await mailbox.close()
    assert result.ok
    assert subjects(erin, "INBOX") == {}
    assert set(subjects(erin, "Archive")) == {"copied"}
    expected = set() if how.kind is DispositionKind.EXPUNGE else {"copied", "alone"}
    assert set(subjects(erin, "Trash")) == expected


# ------------------------------------------ a change between UPDATE's read and write


async def test_a_change_between_read_and_write_is_seen_and_respected() -> None:
    """Email/set carries `ifInState` (RFC 8620 section 5.3): another client's COPY that lands
    after UPDATE read the Email's Mailboxes makes the write fail with stateMismatch, and the
    re-read finds the copy, so the Email only leaves the maildrop."""
    emails = [FakeEmail("e1", message("raced")), FakeEmail("e2", message("alone"))]
    async with FakeJmap(emails) as fake:
        mailbox = await create({"type": "jmap", "url": fake.url}, source="t").open(
            Credentials(fake_jmap.USER, fake_jmap.PASSWORD)
        )
        try:
            ids = [m.identity for m in await mailbox.list()]

            def copy_elsewhere(server: FakeJmap) -> None:
                server.before_set = None
                server.emails["e1"].mailboxes[fake_jmap.ARCHIVE] = True
                server.email_state += 1

            fake.before_set = copy_elsewhere
            result = await mailbox.dispose(ids, Disposition(DispositionKind.EXPUNGE))
        finally:
            await mailbox.close()
        assert result.ok
        assert set(fake.emails) == {"e1"}
        assert fake.emails["e1"].mailboxes == {fake_jmap.ARCHIVE: True}
        sets = fake.methods("Email/set")
        assert len(sets) == 2 and all("ifInState" in s for s in sets)


async def test_a_mailbox_that_never_settles_disposes_nothing() -> None:
    async with FakeJmap([FakeEmail("e1", message("busy"))]) as fake:
        mailbox = await create({"type": "jmap", "url": fake.url}, source="t").open(
            Credentials(fake_jmap.USER, fake_jmap.PASSWORD)
        )
        try:
            ids = [m.identity for m in await mailbox.list()]

            def always_busy(server: FakeJmap) -> None:
                server.email_state += 1

            fake.before_set = always_busy
            result = await mailbox.dispose(ids, Disposition(DispositionKind.EXPUNGE))
        finally:
            await mailbox.close()
        assert result.failed == frozenset({"e1"})
        assert set(fake.emails) == {"e1"}


async def test_reads_and_writes_stay_within_the_servers_limits() -> None:
    """Each chunk is read by one Email/get (maxObjectsInGet) and written by one Email/set
    (maxObjectsInSet): with 2 per get and 3 per set, seven Emails take four of each."""
    emails = [FakeEmail(f"e{n}", message(f"m{n}"), f"2024-01-01T00:00:0{n}Z") for n in range(7)]
    emails[3].mailboxes[fake_jmap.ARCHIVE] = True
    async with FakeJmap(emails, maxObjectsInGet=2, maxObjectsInSet=3) as fake:
        mailbox = await create({"type": "jmap", "url": fake.url}, source="t").open(
            Credentials(fake_jmap.USER, fake_jmap.PASSWORD)
        )
        try:
            ids = [m.identity for m in await mailbox.list()]
            before = len(fake.methods("Email/get"))
            result = await mailbox.dispose(ids, Disposition(DispositionKind.EXPUNGE))
        finally:
            await mailbox.close()
        assert result.ok
        assert list(fake.emails) == ["e3"] and fake.emails["e3"].mailboxes == {
            fake_jmap.ARCHIVE: True
        }
        reads = [len(a["ids"]) for a in fake.methods("Email/get")[before:]]
        assert reads == [2, 2, 2, 1] and len(fake.methods("Email/set")) == 4
