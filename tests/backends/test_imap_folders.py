"""The IMAP backend's merged maildrop (`folders`) and window options, against a real Dovecot.

This module owns the tests of `backends.imap.folders` on the real server: identities that
name their folder (and stay `"<uidvalidity>.<uid>"` for one folder), a merged listing in
arrival order, RETR/TOP switching folders, dispositions acting in the folder each message
is in, `window_newest` / `window_days`, and the configuration checks. The Dovecot fixture
has Trash, Archive and Junk folders; every test starts from bob's emptied mailbox.
"""

from __future__ import annotations

import imaplib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backends.imap import create
from backends.imap.folders import tag_of
from devkit.dovecot import Dovecot
from popbridge.contract import Credentials, Disposition, DispositionKind, Mailbox, RemoteMessage
from popbridge.errors import ConfigError, MessageGone
from tests.backends.contract import message, read_all, subject_of

pytestmark = pytest.mark.dovecot

USER = "bob"
DAY = timedelta(days=1)


def append(dovecot: Dovecot, folder: str, subject: str, received: datetime) -> None:
    """APPEND with an explicit INTERNALDATE (RFC 3501 6.3.11), as a delivery long ago would."""
    client = dovecot.imap(USER)
    try:
        typ, data = client.append(
            f'"{folder}"', "", imaplib.Time2Internaldate(received), message(subject)
        )
        assert typ == "OK", data
    finally:
        client.logout()


def subjects(dovecot: Dovecot, folder: str) -> list[str]:
    client = dovecot.imap(USER)
    try:
        assert client.select(f'"{folder}"', readonly=True)[0] == "OK"
        _, data = client.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    finally:
        client.logout()
    found = (
        re.search(rb"Subject: ?([^\r\n]*)", item[1]) for item in data if isinstance(item, tuple)
    )
    return sorted(match.group(1).decode() for match in found if match)


class Folders:
    """Opens mailboxes on bob's Dovecot account with a given `[backend]` table."""

    def __init__(self, dovecot: Dovecot) -> None:
        self.dovecot = dovecot
        self.credentials = Credentials(USER, dovecot.users[USER])
        self.opened: list[Mailbox] = []

    async def open(self, **overrides: Any) -> Mailbox:
        table = {"type": "imap", "host": self.dovecot.host, "port": self.dovecot.imap_port,
                 "tls": "none", "timeout": 10} | overrides  # fmt: skip
        mailbox = await create(table, source="test.toml").open(self.credentials)
        self.opened.append(mailbox)
        return mailbox

    async def by_subject(self, mailbox: Mailbox) -> dict[str, RemoteMessage]:
        found = {}
        for listed in await mailbox.list():
            header = b"".join(await read_all(mailbox, listed.identity, body_lines=0))
            found[subject_of(header)] = listed
        return found


@pytest.fixture
async def folders(dovecot: Dovecot) -> AsyncIterator[Folders]:
    dovecot.reset_mailbox(USER)
    harness = Folders(dovecot)
    yield harness
    for mailbox in harness.opened:
        await mailbox.close()


NOW = datetime.now(UTC).replace(microsecond=0)


def seed_two_folders(folders: Folders) -> None:
    """INBOX and Junk, interleaved in time: inbox-1 < junk-1 < inbox-2 < junk-2."""
    for n, (folder, subject) in enumerate(
        [("INBOX", "inbox-1"), ("Junk", "junk-1"), ("INBOX", "inbox-2"), ("Junk", "junk-2")]
    ):
        append(folders.dovecot, folder, subject, NOW - timedelta(hours=10 - n))


async def test_one_folder_keeps_plain_identities(folders: Folders) -> None:
    seed_two_folders(folders)
    for options in ({}, {"folders": ["INBOX"]}, {"folder": "inbox"}):
        mailbox = await folders.open(**options)
        listed = await mailbox.list()
        assert list(await folders.by_subject(mailbox)) == ["inbox-1", "inbox-2"]
        assert all(re.fullmatch(r"\d+\.\d+", m.identity) for m in listed)


async def test_merged_folders_list_in_arrival_order_with_folder_tags(folders: Folders) -> None:
    seed_two_folders(folders)
    mailbox = await folders.open(folders=["INBOX", "Junk"])
    found = await folders.by_subject(mailbox)
    assert list(found) == ["inbox-1", "junk-1", "inbox-2", "junk-2"]
    tags = {name: tag_of(name) for name in ("INBOX", "Junk")}
    for subject, listed in found.items():
        tag = tags["INBOX" if subject.startswith("inbox") else "Junk"]
        assert re.fullmatch(rf"{tag}/\d+\.\d+", listed.identity), listed.identity
        assert listed.message_id is None and listed.received is not None
    assert len({m.identity for m in found.values()}) == 4


async def test_retr_and_top_switch_folders(folders: Folders) -> None:
    seed_two_folders(folders)
    mailbox = await folders.open(folders=["Junk", "INBOX"])
    listed = await mailbox.list()
    for entry in [*listed, *reversed(listed)]:
        whole = b"".join(await read_all(mailbox, entry.identity))
        assert len(whole) == entry.size
        assert subject_of(b"".join(await read_all(mailbox, entry.identity, body_lines=1))) == (
            subject_of(whole)
        )
    bogus = f"{tag_of('Archive')}/1.1"
    with pytest.raises(MessageGone):
        await read_all(mailbox, bogus)


@pytest.mark.parametrize(
    ("how", "where"),
    [
        (Disposition(DispositionKind.EXPUNGE), None),
        (Disposition(DispositionKind.TRASH), "Trash"),
        (Disposition(DispositionKind.MOVE, folder="Archive"), "Archive"),
    ],
)
async def test_dispositions_act_in_each_messages_folder(
    folders: Folders, how: Disposition, where: str | None
) -> None:
    seed_two_folders(folders)
    mailbox = await folders.open(folders=["INBOX", "Junk"])
    found = await folders.by_subject(mailbox)
    doomed = [found["inbox-2"].identity, found["junk-1"].identity]
    result = await mailbox.dispose(doomed, how)
    assert result.ok, result.detail
    await mailbox.close()
    assert subjects(folders.dovecot, "INBOX") == ["inbox-1"]
    assert subjects(folders.dovecot, "Junk") == ["junk-2"]
    if where is not None:
        assert subjects(folders.dovecot, where) == ["inbox-2", "junk-1"]


async def test_moving_into_a_merged_folder_fails_only_for_its_own_messages(
    folders: Folders,
) -> None:
    seed_two_folders(folders)
    mailbox = await folders.open(folders=["INBOX", "Junk"])
    found = await folders.by_subject(mailbox)
    doomed = [found["inbox-1"].identity, found["junk-1"].identity]
    result = await mailbox.dispose(doomed, Disposition(DispositionKind.MOVE, folder="Junk"))
    assert result.failed == {found["junk-1"].identity}
    assert "Junk" in result.detail
    await mailbox.close()
    assert subjects(folders.dovecot, "Junk") == ["inbox-1", "junk-1", "junk-2"]


async def test_dispose_after_a_folders_uidvalidity_changed_touches_it_not(
    folders: Folders,
) -> None:
    seed_two_folders(folders)
    mailbox = await folders.open(folders=["INBOX", "Junk"])
    found = await folders.by_subject(mailbox)
    client = folders.dovecot.imap(USER)
    try:  # Junk is deleted and made again: a new UIDVALIDITY (RFC 3501 2.3.1.1)
        assert client.delete('"Junk"')[0] == "OK" and client.create('"Junk"')[0] == "OK"
    finally:
        client.logout()
    append(folders.dovecot, "Junk", "junk-new", NOW)
    doomed = [found["inbox-1"].identity, found["junk-1"].identity]
    result = await mailbox.dispose(doomed, Disposition(DispositionKind.EXPUNGE))
    assert result.failed == {found["junk-1"].identity}
    await mailbox.close()
    assert subjects(folders.dovecot, "INBOX") == ["inbox-2"]
    assert subjects(folders.dovecot, "Junk") == ["junk-new"]


async def test_window_newest_keeps_the_last_arrivals(folders: Folders) -> None:
    seed_two_folders(folders)
    for n in range(1, 6):
        append(folders.dovecot, "INBOX", f"m{n}", NOW - timedelta(minutes=10 - n))
    mailbox = await folders.open(window_newest=2)
    assert list(await folders.by_subject(mailbox)) == ["m4", "m5"]
    merged = await folders.open(folders=["Junk", "INBOX"], window_newest=7)
    # inbox-1 is the oldest of the nine by INTERNALDATE, whatever the folder order.
    expected = ["inbox-2", "junk-2", "m1", "m2", "m3", "m4", "m5"]
    assert list(await folders.by_subject(merged)) == expected


async def test_window_days_keeps_recent_mail(folders: Folders) -> None:
    append(folders.dovecot, "INBOX", "ancient", NOW - 400 * DAY)
    append(folders.dovecot, "INBOX", "last week", NOW - 6 * DAY)
    append(folders.dovecot, "Junk", "junk old", NOW - 8 * DAY)
    append(folders.dovecot, "Junk", "junk new", NOW - DAY)
    one = await folders.open(window_days=7)
    assert list(await folders.by_subject(one)) == ["last week"]
    merged = await folders.open(folders=["INBOX", "Junk"], window_days=7, window_newest=5)
    assert list(await folders.by_subject(merged)) == ["last week", "junk new"]
    everything = await folders.open(folders=["INBOX", "Junk"])
    assert len(await everything.list()) == 4


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"folder": "INBOX", "folders": ["Junk"]}, "backend.folders"),
        ({"folders": []}, "backend.folders"),
        ({"folders": "INBOX"}, "backend.folders"),
        ({"folders": ["INBOX", "inbox"]}, "backend.folders"),
        ({"folders": ["INBOX", "a\nb"]}, "backend.folders"),
        ({"folders": ["INBOX", ""]}, "backend.folders"),
        ({"window_newest": 0}, "backend.window_newest"),
        ({"window_days": "7"}, "backend.window_days"),
        ({"window_dayz": 7}, "backend.window_dayz"),
    ],
)
def test_folder_and_window_settings_are_checked(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"test.toml: {key}:")):
        create({"type": "imap", "host": "h"} | table, source="test.toml")


def test_folder_tags_never_change() -> None:
    # Identities, and so UIDLs, are built on these: a new hash would rename every message.
    assert tag_of("INBOX") == tag_of("inbox") == "83ecb521"
    assert tag_of("Junk") == "16d70c1c"
