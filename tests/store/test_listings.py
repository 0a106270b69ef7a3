"""The stored form of a listing: exact round trips, and a damaged blob is no memory at all.

A blob the store cannot read must never become a wrong listing: it decodes to None (the
next login lists in full) and says so in the log; hypothesis checks the round trip."""

from __future__ import annotations

import logging
import struct
import zlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popbridge.contract import ListingState, RemoteMessage
from popbridge.store import listings

TEXT = st.text(st.characters(blacklist_characters="\0\x01", blacklist_categories=["Cs"]))
WHEN = st.one_of(
    st.none(),
    st.builds(
        lambda seconds, minutes: datetime.fromtimestamp(seconds, UTC).astimezone(
            timezone(timedelta(minutes=minutes))
        ),
        st.integers(0, 4_000_000_000),
        st.integers(-12 * 60, 14 * 60),
    ),
)
MESSAGES = st.lists(
    st.builds(
        RemoteMessage,
        TEXT.filter(bool),
        st.integers(0, 2**62),
        st.none() | TEXT,
        WHEN,
        st.none() | TEXT,
    )
)


@given(TEXT, MESSAGES)
def test_a_listing_round_trips_exactly(token: str, messages: list[RemoteMessage]) -> None:
    state = ListingState(token, tuple(messages))
    decoded = listings.decode(listings.encode(state))
    assert decoded == state
    assert decoded is not None
    for mine, theirs in zip(decoded.messages, messages, strict=True):
        if theirs.received is not None:
            assert mine.received is not None
            assert mine.received.utcoffset() == theirs.received.utcoffset()


def _blob(count: int, body: bytes, kind: int = listings.FORMAT) -> bytes:
    return struct.pack("<BI", kind, count) + zlib.compress(body)


def _two_names_one_count() -> bytes:
    texts = [b"t", b"1.1\x001.2", b"\x01", b"\x01"]
    lengths = struct.pack("<4q", *(len(t) for t in texts))
    numbers = struct.pack("<qdi", 5, 0.0, 0)
    return _blob(1, lengths + b"".join(texts) + numbers)


GOOD = listings.encode(ListingState("t", (RemoteMessage("1.1", 5, "<m>", None),)))


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x01",
        _blob(0, b"", kind=99),
        GOOD[:-3],
        GOOD[:5] + b"not zlib",
        _blob(1, zlib.decompress(GOOD[5:]) + b"x"),  # trailing data
        _blob(2, zlib.decompress(GOOD[5:])),  # counts that disagree with the columns
        _blob(1, b"\xff" * 32),  # absurd text lengths
        _two_names_one_count(),
    ],
)
def test_a_damaged_blob_is_no_memory(blob: bytes, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="popbridge.store.listings"):
        assert listings.decode(blob) is None
    assert "listing in full" in caplog.text


def test_hints_holding_the_separators_are_not_kept() -> None:
    for bad in ("a\0b", "\x01"):
        with pytest.raises(ValueError, match="not kept"):
            listings.encode(ListingState("t", (RemoteMessage("1.1", 5, bad),)))
        versioned = RemoteMessage("1.1", 5, None, None, bad)
        assert listings.encode_or_none(ListingState("t", (versioned,))) is None


async def test_memory_listings_are_per_account() -> None:
    memories = listings.MemoryListings()
    state = ListingState("t", (RemoteMessage("1.1", 5),))
    await memories.for_account("a").save(state)
    assert await memories.for_account("a").load() == state
    assert await memories.for_account("b").load() is None


def _state(token: str, count: int) -> ListingState:
    return ListingState(token, tuple(RemoteMessage(f"1.{n}", 10 + n) for n in range(count)))


async def test_decoded_listings_come_back_for_the_same_blob_only() -> None:
    decoded = listings.Decoded()
    state = _state("t", 3)
    blob = listings.encode(state)
    once = await decoded.decode("a", blob)
    assert once == state and await decoded.decode("a", blob) is once
    assert await decoded.decode("b", blob) is not once  # per account
    changed = listings.encode(_state("u", 3))
    assert await decoded.decode("a", changed) == _state("u", 3)
    decoded.remember("a", blob, state)
    assert await decoded.decode("a", blob) is state
    decoded.remember("a", None, None)
    assert await decoded.decode("a", blob) is not state
    assert await decoded.decode("c", b"\x09garbage") is None
    assert await decoded.decode("c", b"\x02") is None  # too short even to count


async def test_decoded_listings_keep_at_most_their_capacity_least_recent_out() -> None:
    decoded = listings.Decoded(capacity=5)
    states = {name: _state(name, 2) for name in "abc"}
    for name, state in states.items():
        decoded.remember(name, listings.encode(state), state)
    blob_a = listings.encode(states["a"])
    assert await decoded.decode("a", blob_a) is not states["a"]  # evicted by "c": 6 > 5
    assert await decoded.decode("c", listings.encode(states["c"])) is states["c"]
    big = _state("big", 6)
    decoded.remember("big", listings.encode(big), big)  # larger than the whole capacity
    assert await decoded.decode("big", listings.encode(big)) is not big
    assert await decoded.decode("c", listings.encode(states["c"])) is states["c"]
