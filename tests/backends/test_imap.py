"""The IMAP backend against a real Dovecot: the contract suite plus IMAP-only behaviour.

This module owns the IMAP harness for the contract suite (`tests.backends.contract`) and the
tests only an IMAP upstream has: TLS (implicit, STARTTLS, wrong CA), login injection, another
client's `\\Deleted` mail, what goes on the wire (through a recording proxy), and UIDVALIDITY.
The session-wide Dovecot comes from `tests/conftest.py` (`devkit/dovecot.py`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from backends.imap import create, resumption
from backends.imap.connection import IDLE_READ
from devkit.dovecot import Dovecot, free_port, start_dovecot
from devkit.fake_imap import RecordingProxy
from devkit.tlsca import make_test_pki
from popbridge.contract import Backend, Credentials, Disposition, DispositionKind, withheld_by
from popbridge.errors import AuthFailed, BackendFailure, BackendUnavailable, MessageGone
from popbridge.upstream.tlsreads import BULK
from tests.backends.contract import BackendContract, Stored, Where, by_subject, message, read_all

pytestmark = pytest.mark.dovecot

USER = "carol"
FOLDERS: dict[Where, str] = {"maildrop": "INBOX", "trash": "Trash", "move": "Archive"}
CHUNK = 256 * 1024
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_SUBJECT = re.compile(rb"Subject: ?([^\r\n]*)")


def settings(dovecot: Dovecot, **overrides: Any) -> dict[str, Any]:
    """The `[backend]` table for the plain IMAP port (loopback, so tls = none is fine)."""
    table = {"type": "imap", "host": dovecot.host, "port": dovecot.imap_port, "tls": "none"}
    return table | {"timeout": 10, "fetch_chunk": CHUNK} | overrides


class ImapHarness:
    """The contract harness for Dovecot: seeds by Maildir, reads state back with imaplib.

    The backend reaches Dovecot through `proxy`, from an address of its own, so a test's
    failed logins do not delay anyone else's (see `RecordingProxy`).
    """

    fetch_chunk = CHUNK
    move_folder = "Archive"

    def __init__(self, dovecot: Dovecot, user: str, proxy: RecordingProxy) -> None:
        self.dovecot = dovecot
        self.user = user
        self.proxy = proxy
        self.credentials = Credentials(user, dovecot.users[user])

    def backend(self, **overrides: Any) -> Backend:
        table = settings(self.dovecot, port=self.proxy.port) | overrides
        return create(table, source="test.toml")

    def unreachable(self) -> Backend:
        return self.backend(port=free_port(), connect_timeout=2)

    def seed(self, messages: Sequence[bytes]) -> None:
        self.dovecot.seed(self.user, messages)

    def seed_generated(self, count: int, size: int) -> list[bytes]:
        return self.dovecot.seed_generated(self.user, count, size)

    def stored(self, where: Where = "maildrop") -> list[Stored]:
        client = self.dovecot.imap(self.user)
        try:
            assert client.select(FOLDERS[where], readonly=True)[0] == "OK"
            _, data = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        finally:
            client.logout()
        return [_stored(item) for item in data if isinstance(item, tuple)]


def _stored(item: tuple[bytes, bytes]) -> Stored:
    flags_match = _FLAGS.search(item[0])
    subject_match = _SUBJECT.search(item[1])
    flags = set(flags_match.group(1).decode().split()) if flags_match else set()
    return Stored(
        subject=subject_match.group(1).decode() if subject_match else "",
        seen="\\Seen" in flags,
        deleted="\\Deleted" in flags,
        keywords=frozenset(f for f in flags if not f.startswith("\\")),
    )


@pytest.fixture
async def harness(dovecot: Dovecot) -> AsyncIterator[ImapHarness]:
    dovecot.reset_mailbox(USER)
    async with RecordingProxy(dovecot.imap_port) as proxy:
        yield ImapHarness(dovecot, USER, proxy)


class TestImapContract(BackendContract):
    """The contract suite on Dovecot's plain IMAP port."""


# ------------------------------------------------------------------- TLS


async def test_implicit_tls_with_the_test_ca(harness: ImapHarness) -> None:
    harness.seed([message("over tls")])
    dovecot = harness.dovecot
    async with RecordingProxy(dovecot.imaps_port) as proxy:
        backend = harness.backend(tls="implicit", port=proxy.port, ca_file=str(dovecot.pki.ca_file))
        findings = await backend.check()
        assert any(line.startswith("TLS verified: TLSv1.") for line in findings)
        mailbox = await backend.open(harness.credentials)
        try:
            assert list(await by_subject(mailbox)) == ["over tls"]
        finally:
            await mailbox.close()
    assert b"AUTHENTICATE" not in bytes(proxy.sent)  # encrypted from the first byte


def tls_read_size(mailbox: object) -> int:
    """Octets asyncio's TLS layer of the mailbox's upstream connection reads at once."""
    layer: Any = mailbox._connection._transport._ssl_protocol  # type: ignore[attr-defined]
    return len(layer.get_buffer(-1))


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_tls_reads_are_small_while_idle_and_large_while_fetching(
    harness: ImapHarness, tls: str
) -> None:
    sent = harness.seed_generated(3, 300_000)
    dovecot = harness.dovecot
    port = dovecot.imaps_port if tls == "implicit" else harness.proxy.port
    ca_file = str(dovecot.pki.ca_file)
    backend = harness.backend(tls=tls, host="localhost", port=port, ca_file=ca_file)
    mailbox = await backend.open(harness.credentials)
    try:
        assert tls_read_size(mailbox) == IDLE_READ  # logged in, nothing fetched yet
        listed = await mailbox.list()  # a FETCH
        bodies = [b"".join(await read_all(mailbox, m.identity)) for m in listed]
        assert bodies == sent  # every byte came through the resized reads
        assert tls_read_size(mailbox) == BULK  # kept for the next message for a moment
    finally:
        await mailbox.close()


# One long-lived login process, as in Dovecot's high-performance mode: TLS session tickets are
# encrypted with keys of the process that issued them, so only then can a later one resume.
ONE_LOGIN_PROCESS = """
service imap-login {
  service_count = 0
  process_min_avail = 1
  process_limit = 1
}
"""


@pytest.fixture(scope="module")
def resuming_dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    server = start_dovecot(
        tmp_path_factory.mktemp("dovecot-resume"), {USER: "resume-secret"},
        extra_config=ONE_LOGIN_PROCESS,
    )  # fmt: skip
    yield server
    server.stop()


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_later_connections_resume_tls_but_each_logs_in_itself(
    resuming_dovecot: Dovecot, tls: str
) -> None:
    dovecot = resuming_dovecot
    dovecot.reset_mailbox(USER)
    dovecot.seed(USER, [message("resumed")])
    port = dovecot.imaps_port if tls == "implicit" else dovecot.imap_port
    ca_file = str(dovecot.pki.ca_file)
    table = settings(dovecot, tls=tls, host="localhost", port=port, ca_file=ca_file)
    backend = create(table, source="test.toml")
    credentials = Credentials(USER, "resume-secret")
    first = await backend.open(credentials)
    await first.close()
    opened = await asyncio.gather(*(backend.open(credentials) for _ in range(3)))
    try:
        for mailbox in opened:
            transport = mailbox._connection.transport  # type: ignore[attr-defined]
            assert resumption.resumed(transport)  # no certificate sent or verified again
            assert list(await by_subject(mailbox)) == ["resumed"]
    finally:
        for mailbox in opened:
            await mailbox.close()
    # a resumed TLS session proves the server, never the user: a wrong password still fails
    with pytest.raises(AuthFailed):
        await backend.open(Credentials(USER, "wrong password"))


async def test_starttls_upgrades_before_login(harness: ImapHarness) -> None:
    harness.seed([message("after starttls")])
    ca_file = str(harness.dovecot.pki.ca_file)
    backend = harness.backend(tls="starttls", host="localhost", ca_file=ca_file)
    assert any(line.startswith("TLS verified: TLSv1.") for line in await backend.check())
    mailbox = await backend.open(harness.credentials)
    try:
        assert list(await by_subject(mailbox)) == ["after starttls"]
    finally:
        await mailbox.close()
    sent = bytes(harness.proxy.sent)
    assert re.search(rb"^\S+ STARTTLS\r$", sent, re.MULTILINE)
    assert b"AUTHENTICATE" not in sent  # everything after STARTTLS is encrypted


async def test_untrusted_certificate_is_backend_failure(
    harness: ImapHarness, tmp_path: Path
) -> None:
    other_ca = str(make_test_pki(tmp_path / "other").ca_file)
    async with RecordingProxy(harness.dovecot.imaps_port) as imaps:
        for tls, port in (("implicit", imaps.port), ("starttls", harness.proxy.port)):
            backend = harness.backend(tls=tls, port=port, ca_file=other_ca)
            with pytest.raises(BackendFailure):
                await backend.open(harness.credentials)
            with pytest.raises(BackendFailure):
                await backend.check()
    for sent in (bytes(imaps.sent), bytes(harness.proxy.sent)):
        assert b"AUTHENTICATE" not in sent
        assert b"LOGIN" not in sent


# ----------------------------------------------------------- login safety

INJECTED_USERS = [
    'carol" "c4rol pw',
    "carol\\",
    "carol\r\na1 DELETE Archive",
    "carol\na1 DELETE Archive",
    "carol\x00",
    "c\u00e4rol",
    "carol" * 1000,
    "{5}",
    "",
]
INJECTED_PASSWORDS = [
    'x" DELETE Archive',
    "x\\",
    "x\r\na1 DELETE Archive",
    "x\x00carol\x00c4rol pw",
    "p\u00e4ss",
    "x" * 5000,
]


@pytest.mark.parametrize("auth", ["auto", "login"])
async def test_injection_attempts_are_auth_failed_and_change_nothing(
    harness: ImapHarness, auth: str
) -> None:
    harness.seed([message("still here")])
    attempts = [Credentials(user, "c4rol pw") for user in INJECTED_USERS]
    attempts += [Credentials(USER, password) for password in INJECTED_PASSWORDS]
    sent = bytearray()
    for credentials in attempts:
        # A fresh source address each: Dovecot's auth penalty would otherwise turn the
        # later refusals into timeouts.
        async with RecordingProxy(harness.dovecot.imap_port) as proxy:
            with pytest.raises(AuthFailed):
                await harness.backend(port=proxy.port, auth=auth).open(credentials)
        verbs = [line.split(b" ", 2)[1].upper() for line in proxy.lines if b" " in line]
        assert verbs.count(b"LOGIN") + verbs.count(b"AUTHENTICATE") <= 1  # one attempt, one line
        sent += proxy.sent
    lines = bytes(sent).split(b"\r\n")
    verbs_sent = {line.split(b" ", 2)[1].upper() for line in lines if b" " in line}
    assert verbs_sent <= {b"CAPABILITY", b"AUTHENTICATE", b"LOGIN", b"LOGOUT"}
    assert [m.subject for m in harness.stored()] == ["still here"]
    assert harness.stored("move") == []  # Archive still exists: EXAMINE would fail otherwise


async def test_login_quotes_user_and_password(harness: ImapHarness) -> None:
    harness.seed([message("quoted login")])
    mailbox = await harness.backend(auth="login").open(harness.credentials)
    await mailbox.close()
    assert b' LOGIN "carol" "c4rol pw"\r\n' in bytes(harness.proxy.sent)


async def test_missing_folder_is_backend_failure(harness: ImapHarness) -> None:
    with pytest.raises(BackendFailure):
        await harness.backend(folder="No Such Folder").open(harness.credentials)


# --------------------------------------------------------- what goes out


async def test_reading_sends_only_peek_fetches_and_no_writes(harness: ImapHarness) -> None:
    harness.seed([message("small"), message("big", 20000)])
    mailbox = await harness.backend(fetch_chunk=4096).open(harness.credentials)
    try:
        for entry in await mailbox.list(hidden_keyword="popbridge-done"):
            await read_all(mailbox, entry.identity)
            await read_all(mailbox, entry.identity, body_lines=3)
    finally:
        await mailbox.close()
    sent = bytes(harness.proxy.sent).upper()
    assert b"BODY.PEEK[]<4096.4096>" in sent  # the big one came in partial fetches
    assert re.search(rb"BODY\[|RFC822[ )]|RFC822\.TEXT", sent.replace(b"BODY.PEEK[", b"")) is None
    for forbidden in (b" STORE ", b" EXPUNGE", b" CLOSE", b" SELECT ", b" COPY ", b" MOVE "):
        assert forbidden not in sent
    assert b" EXAMINE " in sent


async def test_expunge_keeps_another_clients_deleted_message(harness: ImapHarness) -> None:
    harness.seed([message("ours"), message("theirs"), message("bystander")])
    client = harness.dovecot.imap(USER)
    try:
        client.select("INBOX")
        client.uid("STORE", "2", "+FLAGS.SILENT", "(\\Deleted)")  # flagged, not expunged
    finally:
        client.logout()
    mailbox = await harness.backend().open(harness.credentials)
    try:
        listed = await by_subject(mailbox)
        assert sorted(listed) == ["bystander", "ours"]  # \Deleted mail is not listed (I-3)
        expunge = Disposition(DispositionKind.EXPUNGE)
        assert (await mailbox.dispose([listed["ours"].identity], expunge)).ok
    finally:
        await mailbox.close()
    stored = {m.subject: m for m in harness.stored()}
    assert sorted(stored) == ["bystander", "theirs"]
    assert stored["theirs"].deleted
    sent = bytes(harness.proxy.sent)
    assert re.search(rb"^\S+ UID EXPUNGE 1\r$", sent, re.MULTILINE)  # RFC 4315 2.1
    assert not re.search(rb"^\S+ (EXPUNGE|CLOSE)\b", sent, re.MULTILINE)


# ------------------------------------------------------------- UIDVALIDITY


async def test_identity_of_another_uidvalidity_is_message_gone(harness: ImapHarness) -> None:
    harness.seed([message("only")])
    mailbox = await harness.backend().open(harness.credentials)
    try:
        (entry,) = await mailbox.list()
        validity, uid = entry.identity.split(".")
        with pytest.raises(MessageGone):
            await read_all(mailbox, f"{int(validity) + 1}.{uid}")
        result = await mailbox.dispose(
            [f"{int(validity) + 1}.{uid}"], Disposition(DispositionKind.EXPUNGE)
        )
        assert not result.ok
    finally:
        await mailbox.close()
    assert [m.subject for m in harness.stored()] == ["only"]


async def test_uidvalidity_change_before_dispose_touches_nothing(harness: ImapHarness) -> None:
    harness.seed([message("old a"), message("old b")])
    mailbox = await harness.backend().open(harness.credentials)
    try:
        identities = [m.identity for m in await mailbox.list()]
        harness.dovecot.reset_mailbox(USER)  # a new mailbox: new UIDVALIDITY, same UIDs
        harness.seed([message("new a"), message("new b")])
        result = await mailbox.dispose(identities, Disposition(DispositionKind.EXPUNGE))
    finally:
        await mailbox.close()
    # Dovecot may also refuse the SELECT ("deleted under us"): either way nothing is touched.
    assert result.failed == frozenset(identities)
    assert [m.subject for m in harness.stored()] == ["new a", "new b"]
    assert not any(m.deleted for m in harness.stored())


async def test_closed_mailbox_is_unavailable_and_close_is_idempotent(harness: ImapHarness) -> None:
    mailbox = await harness.backend().open(harness.credentials)
    await mailbox.close()
    await mailbox.close()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await mailbox.list()
    assert time.monotonic() - started < 1


async def test_dispose_batches_beyond_one_command(harness: ImapHarness) -> None:
    harness.seed_generated(1200, 200)
    mailbox = await harness.backend().open(harness.credentials)
    try:
        listed = await mailbox.list()
        doomed = [m.identity for m in listed[::2]] + [m.identity for m in listed[1:40:2]]
        result = await mailbox.dispose(doomed, Disposition(DispositionKind.EXPUNGE))
        assert result.ok, result.detail
    finally:
        await mailbox.close()
    assert len(harness.stored()) == 1200 - 600 - 20


async def test_trash_move_and_seen_of_nothing_change_nothing(harness: ImapHarness) -> None:
    harness.seed([message("untouched")])
    mailbox = await harness.backend().open(harness.credentials)
    try:
        for kind in DispositionKind:
            how = Disposition(kind, folder="Archive", keyword="kw")
            assert (await mailbox.dispose([], how)).ok
    finally:
        await mailbox.close()
    assert harness.stored() == [Stored("untouched", False, False, frozenset())]


async def test_move_to_a_missing_folder_fails_every_identity(harness: ImapHarness) -> None:
    harness.seed([message("stays")])
    mailbox = await harness.backend().open(harness.credentials)
    try:
        (entry,) = await mailbox.list()
        how = Disposition(DispositionKind.MOVE, folder="Nowhere \u00e9")
        result = await mailbox.dispose([entry.identity], how)
    finally:
        await mailbox.close()
    assert result.failed == frozenset([entry.identity])
    assert [m.subject for m in harness.stored()] == ["stays"]


async def test_concurrent_sessions_do_not_share_state(harness: ImapHarness) -> None:
    harness.seed([message(f"c{n}") for n in range(3)])
    backend = harness.backend()
    mailboxes = await asyncio.gather(*(backend.open(harness.credentials) for _ in range(4)))
    try:
        listings = await asyncio.gather(*(m.list() for m in mailboxes))
        assert all(
            [e.identity for e in listing] == [e.identity for e in listings[0]]
            for listing in listings
        )
    finally:
        await asyncio.gather(*(m.close() for m in mailboxes))


@pytest.mark.parametrize("window", [{}, {"window_newest": 1}])
async def test_a_listing_says_what_it_withheld_on_purpose(
    harness: ImapHarness, window: dict[str, int]
) -> None:
    # Messages hidden by the keyword or outside the window are still in the folder: the
    # UID map must know, or a content-identical copy would inherit their UIDLs.
    harness.seed([message("hidden"), message("old"), message("new")])
    backend = harness.backend(**window)
    mailbox = await backend.open(harness.credentials)
    try:
        first = await mailbox.list()
        keyword = Disposition(DispositionKind.KEYWORD, keyword="popbridge-done")
        hidden = first[0].identity
        assert (await mailbox.dispose([hidden], keyword)).ok
    finally:
        await mailbox.close()
    mailbox = await backend.open(harness.credentials)
    try:
        listed = {m.identity for m in await mailbox.list(hidden_keyword="popbridge-done")}
        withheld = withheld_by(mailbox)
    finally:
        await mailbox.close()
    assert hidden in withheld and hidden not in listed
    assert len(withheld | listed) == 3  # every message is either listed or withheld
    assert not withheld & listed
