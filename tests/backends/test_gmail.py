"""The Gmail backend against the local fake Gmail API: the contract suite, sizes, fetching.

This module runs the contract suite (`tests.backends.contract`) and tests what only Gmail
needs: a listing downloads nothing and gives `sizeEstimate` as not exact; sizes told are
counted from `format=raw` when asked, never taken from `sizeEstimate`; the bridge
orders by internalDate then id whatever order the API lists in; paging follows
`nextPageToken`; RETR decodes in bounded pieces; a message that left the label is gone.
Incremental listing is tested in `test_gmail_sync`, writes, limits and auth in
`test_gmail_writes`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest

from devkit.fake_gmail import FakeGmail
from popbridge.contract import Backend, Credentials, ListingMemory, measurer_of
from popbridge.errors import AuthFailed, BackendFailure, BackendUnavailable, MessageGone
from popbridge.store.listings import MemoryListings
from popbridge.store.uidl import is_valid_uidl, uidl_for
from tests.backends.contract import (
    BackendContract,
    as_told,
    crlf,
    listed_as_told,
    message,
    read_all,
    subject_of,
)
from tests.backends.gmail_harness import (  # noqa: F401  (fixtures, used by name)
    USER,
    GmailHarness,
    fake_fixture,
    harness_fixture,
)


class TestGmailContract(BackendContract):
    """The contract suite on the fake Gmail API."""


async def test_sizes_are_counted_not_estimated(harness: GmailHarness) -> None:
    harness.seed([message("lf", 30, line_end=b"\n"), message("crlf", 7)])
    mailbox = await harness.backend().open(harness.credentials)
    try:
        listed = await mailbox.list()
        assert harness.fake.downloads == 0  # a login (and UIDL) costs no download
        for entry, told in zip(listed, await as_told(mailbox, listed), strict=True):
            stored = harness.fake.box(USER).messages[entry.identity]
            estimate = stored.resource("minimal")["sizeEstimate"]
            assert (entry.exact, entry.size) == (False, estimate)
            assert told.exact and told.size == len(stored.raw) != estimate
            assert len(b"".join(await read_all(mailbox, entry.identity))) == told.size
        assert harness.fake.downloads == 4  # counted once, then sent
    finally:
        await mailbox.close()


async def test_measure_counts_only_what_is_asked_and_leaves_out_what_is_gone(
    harness: GmailHarness,
) -> None:
    ids = harness.seed([message(f"g{n}") for n in range(4)])
    memory = MemoryListings().for_account("alice")
    mailbox = await harness.backend().open(harness.credentials)
    try:
        listed = await mailbox.list(memory=memory)
        measurer = measurer_of(mailbox)
        assert measurer is not None and harness.fake.downloads == 0
        harness.fake.remove(USER, listed[0].identity)  # another client, after the listing
        asked = [listed[0].identity, listed[2].identity, "0123abc"]  # one never listed
        sizes = await measurer.measure(asked)
        assert sizes == {listed[2].identity: len(message("g2"))}  # a 404: left out
        assert await measurer.measure(asked) == sizes and harness.fake.downloads == 1
    finally:
        await mailbox.close()
    state = await memory.load()
    assert state is not None and sorted(ids) == sorted(m.identity for m in state.messages)
    assert [m.exact for m in state.messages] == [False, False, True, False]


async def test_identities_are_hex_ids_that_are_their_own_uidls(harness: GmailHarness) -> None:
    ids = harness.seed([message("a"), message("b")])
    mailbox = await harness.backend().open(harness.credentials)
    try:
        listed = await mailbox.list()
    finally:
        await mailbox.close()
    assert [m.identity for m in listed] == ids
    assert all(re.fullmatch("[0-9a-f]+", m.identity) for m in listed)
    assert all(is_valid_uidl(uidl_for(m.identity)) for m in listed)
    assert [uidl_for(m.identity) for m in listed] == ids


async def test_order_is_internal_date_then_id_over_many_pages(harness: GmailHarness) -> None:
    seeded = [message(f"n{n}", 1) for n in range(23)]
    harness.seed(seeded)
    box = harness.fake.box(USER)
    first, second = sorted(box.messages)[3:5]
    box.messages[second].internal_date = box.messages[first].internal_date  # a tie
    mailbox = await harness.backend(page_size=5).open(harness.credentials)
    try:
        listed = await mailbox.list()
    finally:
        await mailbox.close()
    pages = [q for m, p, q in harness.fake.requests if p.endswith("/messages")]
    assert len(pages) == 5 and "pageToken" in pages[-1]
    keys = [(box.messages[m.identity].internal_date, m.identity) for m in listed]
    assert keys == sorted(keys) and len(keys) == 23


async def test_spam_and_trash_are_not_listed(harness: GmailHarness) -> None:
    ids = harness.seed([message("in"), message("trashed"), message("spam")])
    box = harness.fake.box(USER)
    box.messages[ids[1]].labels.add("TRASH")
    box.messages[ids[2]].labels.add("SPAM")
    mailbox = await harness.backend().open(harness.credentials)
    try:
        assert [m.identity for m in await mailbox.list()] == ids[:1]
    finally:
        await mailbox.close()
    assert all("includeSpamTrash=false" in q for _, p, q in harness.fake.requests
               if p.endswith("/messages"))  # fmt: skip


async def test_a_configured_user_label_is_the_maildrop(harness: GmailHarness) -> None:
    ids = harness.seed([message("inbox"), message("filed")])
    label = harness.fake.add_label(USER, "Pop Box")
    harness.fake.box(USER).messages[ids[1]].labels.add(label)
    mailbox = await harness.backend(label="pop box").open(harness.credentials)
    try:
        (entry,) = await mailbox.list()
        assert entry.identity == ids[1]
        assert subject_of(b"".join(await read_all(mailbox, entry.identity))) == "filed"
    finally:
        await mailbox.close()


async def test_retr_of_a_message_that_left_the_label_is_gone(harness: GmailHarness) -> None:
    ids = harness.seed([message("leaving")])
    mailbox = await harness.backend().open(harness.credentials)
    try:
        (entry,) = await mailbox.list()
        harness.fake.change_labels(USER, ids[0], set(), {"INBOX"})
        with pytest.raises(MessageGone):
            await read_all(mailbox, entry.identity)
        harness.fake.box(USER).messages[ids[0]].labels.clear()  # no labels: labelIds left out
        with pytest.raises(MessageGone):
            await read_all(mailbox, entry.identity)
    finally:
        await mailbox.close()


async def test_an_unterminated_last_line_is_counted_with_its_crlf(harness: GmailHarness) -> None:
    raw = b"Subject: tail\r\n\r\nno line end"
    ids = harness.seed([raw])
    harness.fake.box(USER).messages[ids[0]].raw = raw  # seed normalises; keep the bare end
    mailbox = await harness.backend().open(harness.credentials)
    try:
        (entry,) = await listed_as_told(mailbox)
        data = b"".join(await read_all(mailbox, entry.identity))
    finally:
        await mailbox.close()
    assert data == crlf(raw) + b"\r\n" and entry.size == len(data)


async def test_reading_never_removes_unread(fake: FakeGmail, harness: GmailHarness) -> None:
    harness.seed([message("unread")])
    mailbox = await harness.backend().open(harness.credentials)
    try:
        (entry,) = await mailbox.list()
        await read_all(mailbox, entry.identity)
    finally:
        await mailbox.close()
    assert all(m != "POST" or path.endswith("/batch/gmail/v1") for m, path, _ in fake.requests)


# ------------------------------------------------------------ a misbehaving upstream


@pytest.mark.parametrize(
    ("mangle", "problem"),
    [
        (lambda body: body.replace(b'"raw": "', b'"raw": "*'), "not base64url"),
        (lambda body: body.replace(b'"raw"', b'"raw": 5, "x"'), "not a string"),
        (lambda body: body.replace(b'"raw"', b'"big": "' + b"s" * 70_000 + b'", "raw"'), "exceeds"),
        (lambda body: body[: body.rindex(b"}")], "ended inside"),
        (lambda body: body.replace(b'"raw"', b'"other"'), "no raw member"),
        (lambda body: b"<html>busy</html>", "unexpected"),
    ],
    ids=["alphabet", "not-string", "huge-member", "unterminated", "no-raw", "html"],
)
async def test_a_broken_raw_reply_is_a_failure_not_a_size(
    harness: GmailHarness, mangle: Callable[[bytes], bytes], problem: str
) -> None:
    harness.seed([message("broken")])
    mailbox = await harness.backend().open(harness.credentials)
    try:
        listed = await mailbox.list()
        harness.fake.mangle = mangle
        with pytest.raises(BackendFailure, match=problem):
            await as_told(mailbox, listed)
    finally:
        await mailbox.close()


@pytest.mark.parametrize("stall", [False, True], ids=["cut", "stall"])
async def test_a_measurement_cut_or_stalled_is_temporary(
    harness: GmailHarness, stall: bool
) -> None:
    harness.seed([message("small")])
    harness.seed_generated(1, 200_000)
    memory = MemoryListings().for_account("alice")
    mailbox = await harness.backend(max_in_flight=1, timeout=0.5).open(harness.credentials)
    try:
        listed = await mailbox.list(memory=memory)
        harness.fake.cut_at, harness.fake.stall_body = 5000, stall
        with pytest.raises(BackendUnavailable):
            await as_told(mailbox, listed)
    finally:
        await mailbox.close()
    state = await memory.load()  # what was measured before the cut is kept, exact
    assert state is not None and [m.exact for m in state.messages] == [True, False]


async def test_a_download_stalled_midway_is_temporary_within_the_deadline(
    harness: GmailHarness,
) -> None:
    (wire,) = harness.seed_generated(1, 200_000)
    mailbox = await harness.backend(timeout=0.5).open(harness.credentials)
    try:
        (entry,) = await listed_as_told(mailbox)
        harness.fake.cut_at, harness.fake.stall_body = 5000, True
        with pytest.raises(BackendUnavailable, match="no answer"):
            await read_all(mailbox, entry.identity)
    finally:
        await mailbox.close()
    assert entry.size == len(wire)


async def test_error_texts_and_tokens_never_reach_the_log(
    harness: GmailHarness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.fake.throttle = [(403, "userRateLimitExceeded")] * 20
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(BackendUnavailable):
            await harness.backend(max_backoff=0.05).open(harness.credentials)
        harness.fake.throttle = []
        with pytest.raises(AuthFailed):
            await harness.backend().open(Credentials(USER, "ya29.not-valid-anymore", "oauth2"))
    assert "userRateLimitExceeded" in caplog.text
    assert "Quota exceeded" not in caplog.text  # Google's message text stays out
    assert harness.credentials.secret not in caplog.text
    assert "not-valid-anymore" not in caplog.text


@pytest.mark.parametrize(
    ("suffix", "reply"),
    [
        ("/profile", b"[]"),
        ("/profile", b'{"emailAddress": 7}'),
        ("/labels", b'{"labels": "INBOX"}'),
        ("/labels", b"{" * 5000),
        ("/messages", b'{"messages": [{"id": "../../profile"}]}'),
        ("/messages", b'{"messages": [], "nextPageToken": 5}'),
        ("/messages", b"not json"),
        ("/history", b'{"history": ["x"]}'),
    ],
    ids=["profile-array", "profile-address", "labels-string", "labels-nested", "list-id",
         "list-token", "list-text", "history-record"],
)  # fmt: skip
async def test_out_of_protocol_replies_are_failures(
    harness: GmailHarness, suffix: str, reply: bytes
) -> None:
    harness.seed([message("a")])
    memory = MemoryListings().for_account("alice")
    backend = harness.backend()
    if suffix == "/history":
        await _open_and_list(backend, harness, memory)  # so that the next one asks history
    harness.fake.replies[suffix] = reply
    with pytest.raises(BackendFailure):
        await _open_and_list(backend, harness, memory)


async def _open_and_list(backend: Backend, harness: GmailHarness, memory: ListingMemory) -> int:
    mailbox = await backend.open(harness.credentials)
    try:
        return len(await mailbox.list(memory=memory))
    finally:
        await mailbox.close()
