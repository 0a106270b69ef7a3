"""The IMAP backend against a real Courier IMAP: the contract suite over TLS, and the fallbacks
a server with UIDPLUS but without MOVE or special-use folders needs, done for real.

Courier's folders are `INBOX.Trash` and `INBOX.Archive` (separator "."); none carries the
`\\Trash` attribute (RFC 6154), so the `trash` disposition touches nothing and says why.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from devkit.fake_imap import RecordingProxy
from devkit.imap_peer import ImapPeer
from popbridge.contract import Disposition, DispositionKind
from tests.backends.contract import BackendContract, message
from tests.backends.imap_peers import (
    PeerHarness,
    assert_starttls_works,
    assert_trash_touches_nothing,
    dispose_a_and_b,
    subjects,
)

pytestmark = pytest.mark.courier

USER = "carol"


@pytest.fixture
async def harness(courier: ImapPeer) -> AsyncIterator[PeerHarness]:
    courier.reset_mailbox(USER)
    async with RecordingProxy(courier.imap_port) as proxy:
        yield PeerHarness(courier, USER, proxy)


class TestCourierContract(BackendContract):
    """The contract suite on Courier's IMAPS port."""

    async def test_trash_moves_to_the_trash_folder(
        self, harness: PeerHarness, caplog: pytest.LogCaptureFixture
    ) -> None:
        await assert_trash_touches_nothing(harness, caplog)

    @pytest.mark.xfail(
        strict=True,
        reason="Courier serves a 'message unavailable' placeholder for a UID another session "
        "expunged, until this session sees the EXPUNGE; the backend passes it on",
    )
    async def test_fetch_of_a_removed_message_raises_message_gone(
        self, harness: PeerHarness
    ) -> None:
        await super().test_fetch_of_a_removed_message_raises_message_gone(harness)


def test_courier_offers_uidplus_but_not_move_special_use_or_condstore(courier: ImapPeer) -> None:
    caps = courier.capabilities(USER)
    assert "UIDPLUS" in caps
    assert not {"MOVE", "SPECIAL-USE", "CONDSTORE"} & caps


async def test_move_without_move_copies_then_expunges_only_our_uids(
    harness: PeerHarness,
) -> None:
    harness.seed([message("theirs")])
    with harness.peer.session(USER) as client:
        client.select("INBOX")
        client.uid("STORE", "1:*", "+FLAGS.SILENT", "(\\Deleted)")  # another client's, kept
    how = Disposition(DispositionKind.MOVE, folder=harness.move_folder)
    result, listed = await dispose_a_and_b(harness, how, recorded=True)
    assert result.ok, result.detail
    assert listed == {"c"}
    assert subjects(harness.stored()) == ["c", "theirs"]
    assert subjects(harness.stored(), deleted=True) == ["theirs"]
    assert subjects(harness.stored("move"), deleted=False) == ["a", "b"]
    commands = harness.commands()
    assert commands.index("UID COPY") < commands.index("UID STORE") < commands.index("UID EXPUNGE")
    assert not {"UID MOVE", "EXPUNGE", "CLOSE"} & set(commands)  # RFC 4315 2.1: UIDs only


async def test_starttls_on_the_plain_port(harness: PeerHarness) -> None:
    await assert_starttls_works(harness)


def test_courier_runs_its_sessions_as_nobody(courier: ImapPeer) -> None:
    courier.seed(USER, [message("owned")])
    new = courier.directory / "mail" / USER / "Maildir"
    owners = {path.owner() for path in new.rglob("*") if re.search(r"/(cur|new)/", str(path))}
    assert owners == {"nobody"}
