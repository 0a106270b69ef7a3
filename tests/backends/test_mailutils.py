"""The IMAP backend against a real GNU Mailutils imap4d: the contract suite over TLS, and the
fallbacks a server without UIDPLUS, MOVE, special-use folders or keywords needs, done for real.

Without UIDPLUS (RFC 4315) the backend never expunges: a plain EXPUNGE would also remove what
other clients flagged `\\Deleted`, so deleted and moved messages stay flagged `\\Deleted`, which
hides them from later listings, with a warning in the log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from devkit.fake_imap import RecordingProxy
from devkit.imap_peer import ImapPeer
from popbridge.contract import Disposition, DispositionKind
from popbridge.errors import MessageGone
from tests.backends.contract import HIDDEN, BackendContract, by_subject, message, read_all
from tests.backends.imap_peers import (
    PeerHarness,
    assert_starttls_works,
    assert_trash_touches_nothing,
    dispose_a_and_b,
    subjects,
)
from tests.conftest import IMAP4D_USERS

pytestmark = pytest.mark.mailutils

USER = next(login for login in IMAP4D_USERS if login.startswith("carol@"))
_EXPUNGING = {"UID EXPUNGE", "EXPUNGE", "CLOSE", "UID MOVE"}


@pytest.fixture
async def harness(imap4d: ImapPeer) -> AsyncIterator[PeerHarness]:
    imap4d.reset_mailbox(USER)
    async with RecordingProxy(imap4d.imap_port) as proxy:
        yield PeerHarness(imap4d, USER, proxy)


class TestMailutilsContract(BackendContract):
    """The contract suite on imap4d's IMAPS port, with the no-UIDPLUS outcomes."""

    async def test_trash_moves_to_the_trash_folder(
        self, harness: PeerHarness, caplog: pytest.LogCaptureFixture
    ) -> None:
        await assert_trash_touches_nothing(harness, caplog)

    async def test_expunge_removes_exactly_the_given_messages(
        self, harness: PeerHarness, caplog: pytest.LogCaptureFixture
    ) -> None:
        how = Disposition(DispositionKind.EXPUNGE)
        result, listed = await dispose_a_and_b(harness, how, recorded=True)
        assert result.ok, result.detail
        assert listed == {"c"}
        assert subjects(harness.stored(), deleted=True) == ["a", "b"]
        assert subjects(harness.stored(), deleted=False) == ["c"]
        assert "UID STORE" in harness.commands()
        assert not _EXPUNGING & set(harness.commands())
        assert "no UIDPLUS: leaving \\Deleted set without expunging" in caplog.text

    async def test_move_moves_to_the_named_folder(
        self, harness: PeerHarness, caplog: pytest.LogCaptureFixture
    ) -> None:
        how = Disposition(DispositionKind.MOVE, folder=harness.move_folder)
        result, listed = await dispose_a_and_b(harness, how, recorded=True)
        assert result.ok, result.detail
        assert listed == {"c"}
        assert subjects(harness.stored(), deleted=True) == ["a", "b"]
        assert subjects(harness.stored("move"), deleted=False) == ["a", "b"]
        commands = harness.commands()
        assert commands.index("UID COPY") < commands.index("UID STORE")
        assert not _EXPUNGING & set(commands)
        assert "no MOVE/UIDPLUS: originals stay flagged \\Deleted" in caplog.text

    async def test_keyword_hides_the_messages_from_later_listings(
        self, harness: PeerHarness, caplog: pytest.LogCaptureFixture
    ) -> None:
        # imap4d keeps no keywords (PERMANENTFLAGS has no \*): the STORE is refused, and the
        # messages are reported not done rather than silently shown again.
        how = Disposition(DispositionKind.KEYWORD, keyword=HIDDEN)
        result, listed = await dispose_a_and_b(harness, how)
        assert not result.ok
        assert len(result.failed) == 2
        assert listed == {"a", "b", "c"}
        assert all(not m.keywords and not m.deleted for m in harness.stored())
        assert "UID STORE refused" in caplog.text

    async def test_messages_already_gone_count_as_done(self, harness: PeerHarness) -> None:
        # Here nothing is ever gone: the first session leaves the message flagged \Deleted, and
        # the second finds it so (done), or, when imap4d gave the two sessions different
        # UIDVALIDITYs (it does while another session is still closing the mailbox), touches
        # nothing and says so. Either way the message stays, flagged by the first.
        harness.seed([message("once")])
        first = await harness.backend().open(harness.credentials)
        second = await harness.backend().open(harness.credentials)
        try:
            (entry,) = await first.list()
            expunge = Disposition(DispositionKind.EXPUNGE)
            assert (await first.dispose([entry.identity], expunge)).ok
            again = await second.dispose([entry.identity], expunge)
            assert again.ok or "UIDVALIDITY" in again.detail
            assert (await second.dispose([], expunge)).ok
        finally:
            await first.close()
            await second.close()
        assert subjects(harness.stored(), deleted=True) == ["once"]

    @pytest.mark.xfail(
        strict=True,
        reason="imap4d answers a UID FETCH of a message another session expunged with an empty "
        "BODY[] until this session sees the EXPUNGE; the backend passes it on",
    )
    async def test_fetch_of_a_removed_message_raises_message_gone(
        self, harness: PeerHarness
    ) -> None:
        # The backend never removes mail here, so another client expunges it.
        harness.seed([message("doomed"), message("kept")])
        reader = await harness.backend().open(harness.credentials)
        try:
            doomed = (await by_subject(reader))["doomed"]
            with harness.peer.session(USER) as client:
                client.select("INBOX")
                client.uid("STORE", "1", "+FLAGS.SILENT", "(\\Deleted)")
                client.expunge()
            with pytest.raises(MessageGone):
                await read_all(reader, doomed.identity)
        finally:
            await reader.close()


def test_imap4d_offers_none_of_uidplus_move_special_use_condstore(imap4d: ImapPeer) -> None:
    caps = imap4d.capabilities(USER)
    assert not {"UIDPLUS", "MOVE", "SPECIAL-USE", "CONDSTORE"} & caps
    assert {"STARTTLS", "LITERAL+"} <= caps


async def test_starttls_on_the_plain_port(harness: PeerHarness) -> None:
    await assert_starttls_works(harness)


# ------------------------------------------------- what this server gets wrong, pinned


def test_imap4d_renumbers_the_newest_message_of_new_at_its_first_select(
    imap4d: ImapPeer,
) -> None:
    """Why the launcher settles what it seeds: imap4d 3.15 gives the newest message in
    Maildir's new/ another UID when a read-write SELECT moves it to cur/ (RFC 3501 2.3.1.1
    wants UIDs that persist), so a bridge that EXAMINEs first would list a UIDL that changes."""
    imap4d.reset_mailbox(USER)
    imap4d.settle = False
    try:
        imap4d.seed(USER, [message("one"), message("two")])
    finally:
        imap4d.settle = True
    before = sorted(imap4d.uids(USER))  # EXAMINE, as the bridge lists
    with imap4d.session(USER) as client:
        client.select("INBOX")
    after = sorted(imap4d.uids(USER))
    assert before[0] == after[0]
    assert before[1] != after[1]


def test_imap4d_uid_search_reads_a_uid_set_as_sequence_numbers(harness: PeerHarness) -> None:
    """Why the dispose verification cannot be trusted here, and a refused command counts as
    not done: in UID SEARCH, imap4d 3.15 matches the UID key (RFC 3501 6.4.4) against
    message sequence numbers."""
    harness.seed([message("gone one"), message("gone two")])
    harness.peer.reset_mailbox(USER)  # expunged: from here UIDs and numbers differ
    harness.seed([message("one"), message("two")])
    uids = sorted(harness.peer.uids(USER))
    assert uids[0] > 2
    with harness.peer.session(USER) as client:
        client.select("INBOX", readonly=True)
        by_uid = client.uid("SEARCH", "UID", f"{uids[0]}:{uids[1]}")[1][0]
        by_number = client.uid("SEARCH", "UID", "1:2")[1][0]
    assert by_uid == b""
    assert by_number == f"{uids[0]} {uids[1]}".encode()
