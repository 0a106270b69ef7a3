"""The backend contract suite: what every `Backend` must do, whatever its upstream.

This module owns the tests every backend runs unchanged (IMAP now, JMAP later). A backend's
test module subclasses `BackendContract` and provides a `harness` fixture: a `Harness` that
builds the backend, seeds messages upstream, and reads the upstream state back (which
messages exist, their flags and keywords, what is in the trash and in another folder).
Messages are told apart by their Subject, so the suite needs no backend-specific identities.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import pytest

from popbridge.contract import (
    Backend,
    Credentials,
    Disposition,
    DispositionKind,
    ListingMemory,
    Mailbox,
    RemoteMessage,
    measurer_of,
    with_exact_sizes,
)
from popbridge.errors import AuthFailed, BackendUnavailable, MessageGone
from popbridge.pop3.wire import normalised_size
from popbridge.store.listings import MemoryListings

Where = Literal["maildrop", "trash", "move"]
HIDDEN = "popbridge-done"


@dataclass(frozen=True)
class Stored:
    """One message as the upstream holds it, in backend-neutral terms."""

    subject: str
    seen: bool
    deleted: bool
    keywords: frozenset[str]


class Harness(Protocol):
    """What a backend's test module supplies to the contract suite."""

    credentials: Credentials
    fetch_chunk: int  # the `fetch` piece size `backend()` is configured with
    move_folder: str  # an existing folder other than the maildrop, for MOVE

    def backend(self) -> Backend: ...
    def unreachable(self) -> Backend: ...
    def seed(self, messages: Sequence[bytes]) -> None: ...
    def seed_generated(self, count: int, size: int) -> list[bytes]: ...
    def stored(self, where: Where = "maildrop") -> list[Stored]: ...


def message(subject: str, body_lines: int = 3, *, line_end: bytes = b"\r\n") -> bytes:
    """A small message with a unique Subject (the suite's handle on it)."""
    head = f"From: a@example.org\nTo: b@example.org\nSubject: {subject}\n\n"
    body = "".join(f"line {n} of {subject}\n" for n in range(body_lines))
    return (head + body).encode().replace(b"\n", line_end)


def crlf(data: bytes) -> bytes:
    """Every line end as CRLF: how POP3 counts and sends octets (RFC 1939 section 11)."""
    return re.sub(rb"\r?\n", b"\r\n", data)


def subject_of(data: bytes) -> str:
    found = re.search(rb"^Subject: ?(.*?)\r?$", data, re.MULTILINE)
    assert found is not None, data[:200]
    return found.group(1).decode()


async def read_all(mailbox: Mailbox, identity: str, **options: Any) -> list[bytes]:
    return [piece async for piece in mailbox.fetch(identity, **options)]


async def as_told(mailbox: Mailbox, listed: Sequence[RemoteMessage]) -> list[RemoteMessage]:
    """The listing as STAT and LIST tell it: sizes not yet exact measured, as the core does."""
    unsure = [message.identity for message in listed if not message.exact]
    measurer = measurer_of(mailbox)
    if not unsure or measurer is None:
        return list(listed)
    return with_exact_sizes(listed, await measurer.measure(unsure))


def downloads(harness: Harness) -> int:
    """Whole messages the upstream served so far, where the harness counts them (backends
    whose listing must download nothing: Graph and Gmail); 0 elsewhere."""
    counted = getattr(harness, "downloads", None)
    return int(counted()) if callable(counted) else 0


async def listed_as_told(
    mailbox: Mailbox, memory: ListingMemory | None = None, **options: Any
) -> list[RemoteMessage]:
    return await as_told(mailbox, await mailbox.list(memory=memory, **options))


async def by_subject(mailbox: Mailbox, hidden: str | None = None) -> dict[str, RemoteMessage]:
    """The listing keyed by Subject (read with a TOP-style fetch of the header only)."""
    found: dict[str, RemoteMessage] = {}
    for listed in await mailbox.list(hidden_keyword=hidden):
        found[subject_of(b"".join(await read_all(mailbox, listed.identity, body_lines=0)))] = listed
    return found


class BackendContract:
    """Every backend runs these; its module provides the `harness` fixture."""

    # ---------------------------------------------------------------- listing

    async def test_listing_sizes_equal_fetched_octets(self, harness: Harness) -> None:
        seeded = [message("lf", line_end=b"\n"), message("crlf", 40), message("empty body", 0)]
        harness.seed(seeded)
        mailbox = await harness.backend().open(harness.credentials)
        try:
            listed = await mailbox.list()
            assert downloads(harness) == 0 and len(listed) == 3
            for original, entry in zip(seeded, await as_told(mailbox, listed), strict=True):
                data = b"".join(await read_all(mailbox, entry.identity))
                assert crlf(data) == crlf(original)  # oldest first, content intact
                assert entry.size == len(crlf(data)) and entry.exact
        finally:
            await mailbox.close()

    async def test_the_first_listing_counts_the_crlf_pop3_adds(self, harness: Harness) -> None:
        # RFC 1939 sections 3 and 11: RETR ends a last line that has none with CRLF, and LIST
        # must count it in the very first session (the upstream's own size does not)
        if not getattr(harness, "exact_on_first_sight", True):
            pytest.xfail("no partial download: exact once the message was first sent")
        harness.seed([b"Subject: open\r\n\r\nno line end", message("closed")])
        memories = MemoryListings()
        for session in ("first", "next"):  # measured in the first, remembered for the next
            mailbox = await harness.backend().open(harness.credentials)
            try:
                listed = await mailbox.list(memory=memories.for_account("someone"))
                assert session == "first" or all(m.exact for m in listed)
                for entry in await as_told(mailbox, listed):
                    data = b"".join(await read_all(mailbox, entry.identity))
                    assert entry.size == normalised_size(data) and entry.exact
            finally:
                await mailbox.close()

    async def test_identities_are_stable_across_sessions(self, harness: Harness) -> None:
        harness.seed([message(f"m{n}") for n in range(5)])
        first = await harness.backend().open(harness.credentials)
        second = await harness.backend().open(harness.credentials)
        try:
            one, two = await first.list(), await second.list()
            assert [m.identity for m in one] == [m.identity for m in two]
            assert len({m.identity for m in one}) == 5
        finally:
            await first.close()
            await second.close()

    async def test_lists_three_thousand_messages(self, harness: Harness) -> None:
        harness.seed_generated(3000, 300)
        mailbox = await harness.backend().open(harness.credentials)
        try:
            started = time.monotonic()
            listed = await mailbox.list()
            elapsed = time.monotonic() - started
            print(f"listing 3000 messages took {elapsed:.3f} s")
            assert downloads(harness) == 0  # a login costs the listing only
            assert len({m.identity for m in listed}) == len(listed) == 3000
            assert all(m.size >= 300 for m in listed if m.exact)
            (last,) = await as_told(mailbox, listed[-1:])
            assert last.exact and last.size >= 300 and downloads(harness) <= 1
            head = b"".join(await read_all(mailbox, last.identity, body_lines=0))
            assert subject_of(head) == "test message 3000"  # oldest first
        finally:
            await mailbox.close()

    # --------------------------------------------------------------- fetching

    async def test_large_message_streams_in_bounded_chunks(self, harness: Harness) -> None:
        (wire,) = harness.seed_generated(1, 5_000_000)
        mailbox = await harness.backend().open(harness.credentials)
        try:
            (entry,) = await as_told(mailbox, await mailbox.list())
            pieces = await read_all(mailbox, entry.identity)
            assert len(pieces) > 1
            assert max(map(len, pieces)) <= harness.fetch_chunk
            assert b"".join(pieces) == wire
            assert entry.size == len(wire)
        finally:
            await mailbox.close()

    async def test_top_does_not_read_a_large_message_whole(self, harness: Harness) -> None:
        (wire,) = harness.seed_generated(1, 5_000_000)
        mailbox = await harness.backend().open(harness.credentials)
        try:
            (entry,) = await mailbox.list()
            data = b"".join(await read_all(mailbox, entry.identity, body_lines=10))
            assert wire.startswith(data)
            header_end = wire.index(b"\r\n\r\n") + 4
            assert data[header_end:].count(b"\r\n") >= 10  # enough lines for TOP 10
            assert len(data) < len(wire) // 10  # a prefix, not the whole message
        finally:
            await mailbox.close()

    async def test_top_zero_lines_gives_at_least_the_header(self, harness: Harness) -> None:
        original = message("header only", 50)
        harness.seed([original])
        mailbox = await harness.backend().open(harness.credentials)
        try:
            (entry,) = await mailbox.list()
            data = b"".join(await read_all(mailbox, entry.identity, body_lines=0))
            assert crlf(original).startswith(data)
            assert data.endswith(b"\r\n\r\n")
        finally:
            await mailbox.close()

    async def test_reading_never_marks_messages_seen(self, harness: Harness) -> None:
        harness.seed([message("unread one"), message("unread two")])
        mailbox = await harness.backend().open(harness.credentials)
        try:
            for entry in await mailbox.list():
                await read_all(mailbox, entry.identity)
                await read_all(mailbox, entry.identity, body_lines=1)
        finally:
            await mailbox.close()
        stored = harness.stored()
        assert len(stored) == 2
        assert not any(m.seen for m in stored)

    async def test_fetch_of_a_removed_message_raises_message_gone(self, harness: Harness) -> None:
        harness.seed([message("doomed"), message("kept")])
        reader = await harness.backend().open(harness.credentials)
        try:
            doomed = (await by_subject(reader))["doomed"]
            remover = await harness.backend().open(harness.credentials)
            expunge = Disposition(DispositionKind.EXPUNGE)
            assert (await remover.dispose([doomed.identity], expunge)).ok
            await remover.close()
            with pytest.raises(MessageGone):
                await read_all(reader, doomed.identity)
            with pytest.raises(MessageGone):
                await read_all(reader, "no-such-identity")
        finally:
            await reader.close()

    # ----------------------------------------------------------- dispositions

    async def _dispose(self, harness: Harness, how: Disposition) -> set[str]:
        """Seed a, b, c; dispose of a and b; return the subjects the next listing shows."""
        harness.seed([message("a"), message("b"), message("c")])
        mailbox = await harness.backend().open(harness.credentials)
        try:
            listed = await by_subject(mailbox)
            result = await mailbox.dispose([listed["a"].identity, listed["b"].identity], how)
            assert result.ok, result.detail
            assert result.failed == frozenset()
        finally:
            await mailbox.close()
        again = await harness.backend().open(harness.credentials)
        try:
            return set(await by_subject(again, how.hides_keyword))
        finally:
            await again.close()

    async def test_expunge_removes_exactly_the_given_messages(self, harness: Harness) -> None:
        assert await self._dispose(harness, Disposition(DispositionKind.EXPUNGE)) == {"c"}
        assert [m.subject for m in harness.stored()] == ["c"]

    async def test_trash_moves_to_the_trash_folder(self, harness: Harness) -> None:
        assert await self._dispose(harness, Disposition(DispositionKind.TRASH)) == {"c"}
        assert [m.subject for m in harness.stored()] == ["c"]
        assert sorted(m.subject for m in harness.stored("trash")) == ["a", "b"]

    async def test_move_moves_to_the_named_folder(self, harness: Harness) -> None:
        how = Disposition(DispositionKind.MOVE, folder=harness.move_folder)
        assert await self._dispose(harness, how) == {"c"}
        assert [m.subject for m in harness.stored()] == ["c"]
        assert sorted(m.subject for m in harness.stored("move")) == ["a", "b"]

    async def test_seen_flags_and_keeps_the_messages(self, harness: Harness) -> None:
        assert await self._dispose(harness, Disposition(DispositionKind.SEEN)) == {"a", "b", "c"}
        assert {m.subject: m.seen for m in harness.stored()} == {"a": True, "b": True, "c": False}

    async def test_keyword_hides_the_messages_from_later_listings(self, harness: Harness) -> None:
        how = Disposition(DispositionKind.KEYWORD, keyword=HIDDEN)
        assert await self._dispose(harness, how) == {"c"}
        stored = {m.subject: m for m in harness.stored()}
        assert sorted(stored) == ["a", "b", "c"]
        assert HIDDEN in stored["a"].keywords
        assert HIDDEN not in stored["c"].keywords
        assert not any(m.deleted for m in stored.values())

    async def test_messages_already_gone_count_as_done(self, harness: Harness) -> None:
        harness.seed([message("once")])
        first = await harness.backend().open(harness.credentials)
        second = await harness.backend().open(harness.credentials)
        try:
            (entry,) = await first.list()
            expunge = Disposition(DispositionKind.EXPUNGE)
            assert (await first.dispose([entry.identity], expunge)).ok
            assert (await second.dispose([entry.identity], expunge)).ok
            assert (await second.dispose([], expunge)).ok
        finally:
            await first.close()
            await second.close()
        assert harness.stored() == []

    # -------------------------------------------------------------- failures

    async def test_wrong_password_is_auth_failed(self, harness: Harness) -> None:
        wrong = Credentials(harness.credentials.user, harness.credentials.secret + "x")
        with pytest.raises(AuthFailed):
            await harness.backend().open(wrong)

    async def test_unreachable_upstream_is_unavailable(self, harness: Harness) -> None:
        with pytest.raises(BackendUnavailable):
            await harness.unreachable().open(harness.credentials)

    async def test_check_reports_findings_without_credentials(self, harness: Harness) -> None:
        findings = await harness.backend().check()
        assert findings
        assert all(isinstance(line, str) and line for line in findings)
