"""Exact sizes of never-seen Emails (`backends.jmap.sizes`): against Cyrus and a fake.

This module owns the tests of `JmapMailbox.measure` beyond the contract suite: against the
real Cyrus (which ignores Range), that a size measured once is remembered with the listing
and never measured again, also across a full listing, and that a listing memory from before
sizes were measured is not trusted; against `devkit.fake_jmap`, every way a download can
answer a Range request (206, 200 with the whole blob, 416, more octets than asked, a stall,
a blob gone), each of which gives the exact size or leaves the Email out, never a wrong one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from backends.jmap import create
from backends.jmap.transport import Transport
from devkit import fake_jmap
from devkit.cyrus import Cyrus, start_cyrus
from devkit.fake_jmap import FakeEmail, FakeJmap
from popbridge.contract import (
    Backend,
    Credentials,
    ListingState,
    Mailbox,
    RemoteMessage,
    measurer_of,
)
from popbridge.pop3.wire import normalised_size
from popbridge.store.listings import MemoryListings
from tests.backends.contract import listed_as_told, message, read_all

OPEN = b"Subject: open\r\n\r\nno line end"  # POP3 adds CRLF: two octets more than `size`
USER = Credentials("erin", "3rin pw")


@pytest.fixture(scope="module")
def cyrus() -> Iterator[Cyrus]:
    server = start_cyrus({USER.user: USER.secret})
    yield server
    server.stop()


@pytest.fixture
def upstream(cyrus: Cyrus) -> Cyrus:
    cyrus.reset_mailbox(USER.user)
    return cyrus


def backend(cyrus: Cyrus) -> Backend:
    return create({"type": "jmap", "url": cyrus.http_url, "timeout": 10}, source="test.toml")


async def measures(
    monkeypatch: pytest.MonkeyPatch, mailbox: Mailbox, **options: Any
) -> tuple[list[RemoteMessage], list[str]]:
    """The listing as STAT tells it, and the URLs of the downloads that measuring cost."""
    asked: list[str] = []
    original = Transport.ranged

    def counting(self: Transport, url: str, ranges: str, *, chunk: int) -> Any:
        asked.append(url)
        return original(self, url, ranges, chunk=chunk)

    monkeypatch.setattr(Transport, "ranged", counting)
    return await listed_as_told(mailbox, **options), asked


async def sent(mailbox: Mailbox, identity: str) -> int:
    return normalised_size(b"".join(await read_all(mailbox, identity)))


async def test_a_size_is_measured_once_then_remembered(
    upstream: Cyrus, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream.seed(USER.user, [OPEN, message("closed")])
    memory = MemoryListings().for_account("someone")
    mailbox = await backend(upstream).open(USER)
    try:
        first, asked = await measures(monkeypatch, mailbox, memory=memory)
        assert len(asked) == 2
        assert [m.size for m in first] == [await sent(mailbox, m.identity) for m in first]
    finally:
        await mailbox.close()
    upstream.seed(USER.user, [b"Subject: later\r\n\r\nalso open"])
    for options in ({}, {"hidden_keyword": "$done"}):  # Email/changes, then a full listing
        mailbox = await backend(upstream).open(USER)
        try:
            listed = await mailbox.list(memory=memory, **options)
            assert [m.exact for m in listed[:2]] == [True, True]
            told, asked = await measures(monkeypatch, mailbox, memory=memory, **options)
            assert len(asked) == (1 if not options else 0)  # only the new Email, once
            assert [m.size for m in told] == [await sent(mailbox, m.identity) for m in told]
            assert all(m.exact for m in told)
        finally:
            await mailbox.close()


async def test_a_memory_from_before_measuring_is_not_trusted(upstream: Cyrus) -> None:
    # a listing token of version 1 kept the server's sizes, marked exact
    upstream.seed(USER.user, [OPEN])
    memory = MemoryListings().for_account("someone")
    mailbox = await backend(upstream).open(USER)
    try:
        (entry,) = await mailbox.list(memory=memory)
        state = await memory.load()
        assert state is not None
        old = state.token.replace('"v":2', '"v":1')
        await memory.save(ListingState(old, (RemoteMessage(entry.identity, entry.size),)))
        (again,) = await mailbox.list(memory=memory)
        assert not again.exact
        told = await listed_as_told(mailbox, memory=memory)
        assert told[0].size == entry.size + 2 == await sent(mailbox, entry.identity)
    finally:
        await mailbox.close()


# ------------------------------------------------------------ the scripted fake

ENDINGS = {
    "e1": b"Subject: a\r\n\r\nno line end",
    "e2": b"Subject: b\r\n\r\nends well\r\n",
    "e3": b"Subject: c\r\n\r\nends in a lone CR\r",
    "e4": b"x",
}


def fake_emails() -> list[FakeEmail]:
    return [
        FakeEmail(i, blob, f"2024-01-01T00:00:0{n}Z") for n, (i, blob) in enumerate(ENDINGS.items())
    ]


async def fake_measure(
    fake: FakeJmap, **settings: Any
) -> tuple[Sequence[RemoteMessage], dict[str, int]]:
    table = {"type": "jmap", "url": fake.url, "timeout": 5} | settings
    mailbox = await create(table, source="test.toml").open(
        Credentials(fake_jmap.USER, fake_jmap.PASSWORD)
    )
    try:
        listed = await mailbox.list()
        measurer = measurer_of(mailbox)
        assert measurer is not None
        measured = await measurer.measure([m.identity for m in listed])
        asked = len(fake.range_headers)
        # once per session: what was measured is exact, what was left out waits for RETR
        assert await measurer.measure([m.identity for m in listed]) == {}
        assert len(fake.range_headers) == asked
        return listed, measured
    finally:
        await mailbox.close()


EXACT = {i: normalised_size(blob) for i, blob in ENDINGS.items()}


@pytest.mark.parametrize("ranges", ["honour", "ignore"])
async def test_range_honoured_or_ignored_gives_exact_sizes(
    ranges: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with FakeJmap(fake_emails()) as fake:
        fake.ranges = ranges
        caplog.set_level(logging.INFO, logger="backends.jmap.sizes")
        listed, measured = await fake_measure(fake)
        assert not any(m.exact for m in listed)
        assert [m.size for m in listed] == [len(blob) for blob in ENDINGS.values()]
        assert measured == EXACT
        assert fake.range_headers == ["bytes=-2"] * 4
        said = [r for r in caplog.records if "ignores Range" in r.getMessage()]
        assert len(said) == (1 if ranges == "ignore" else 0)  # once per mailbox


@pytest.mark.parametrize("old_limit", [{}, {"max_measure_download": 100}])
async def test_a_server_ignoring_range_has_blobs_of_any_size_measured(
    old_limit: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    # a large message without a final CRLF: listed two octets short, told exactly
    big = b"Subject: big\r\n\r\n" + b"y" * 100 + b"\r\n" * 20_000 + b"no line end"
    emails = [*fake_emails(), FakeEmail("big", big, "2024-01-02T00:00:00Z")]
    async with FakeJmap(emails) as fake:
        listed, measured = await fake_measure(fake, **old_limit)
        assert measured == EXACT | {"big": len(big) + 2}  # once an old limit left it out
        assert next(m.size for m in listed if m.identity == "big") == len(big)
        assert len(fake.range_headers) == 5
    said = [r.getMessage() for r in caplog.records if "max_measure_download" in r.getMessage()]
    assert len(said) == len(old_limit)
    assert all("obsolete and ignored" in line for line in said)


@pytest.mark.parametrize("ranges", ["refuse", "long", "longer-whole", "stall"])
async def test_a_misbehaving_download_leaves_emails_out(ranges: str) -> None:
    # "long" sends ten times the octets asked for: all of "x" (e4), which would be right
    async with FakeJmap(fake_emails()[:3]) as fake:
        fake.ranges = ranges
        _, measured = await fake_measure(fake, timeout=0.5)
        assert measured == {}
        if ranges == "stall":  # past the deadline the rest is left for RETR
            assert len(fake.range_headers) == 1


@pytest.mark.parametrize("ranges", ["honour", "ignore"])
async def test_a_blob_gone_is_left_out_and_the_rest_measured(ranges: str) -> None:
    async with FakeJmap(fake_emails()) as fake:
        fake.ranges = ranges
        fake.gone_blobs = {fake.emails["e1"].blob_id, fake.emails["e3"].blob_id}
        _, measured = await fake_measure(fake)
        assert measured == {"e2": EXACT["e2"], "e4": EXACT["e4"]}
        assert len(fake.range_headers) == 2  # e1 (gone) was no proof either way
