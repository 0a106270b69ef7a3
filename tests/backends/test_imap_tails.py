"""The IMAP listing's pure parts: size bands for the last-octets FETCH, what POP3 adds at
the end, and the parsers of EXAMINE status and ESEARCH sets (bounded, strict)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.imap import tails, wire
from popbridge.pop3.wire import normalised_size

SIZES = st.lists(st.integers(1, 5000), max_size=1200)


@given(SIZES)
def test_every_message_is_in_one_band_that_covers_its_last_two_octets(sizes: list[int]) -> None:
    bands = tails.bands(list(enumerate(sizes)))
    seen = [uid for band in bands for uid in band.sizes]
    assert sorted(seen) == list(range(len(sizes)))
    for band in bands:
        assert len(band.sizes) <= tails.LIST_BATCH
        assert band.length <= tails.TAIL_SPAN + 2
        # what the reply carries: each message's octets from the band's start to its end
        assert sum(size - band.start for size in band.sizes.values()) <= tails.BAND_OCTETS
        for size in band.sizes.values():
            assert band.start <= max(0, size - 2) and band.start + band.length >= size


LINES = st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))


@given(LINES, st.sampled_from([b"", b"\r", b"\n", b"\r\n", b"x"]))
def test_the_octets_added_are_what_retr_adds(lines: list[bytes], end: bytes) -> None:
    """A message as an IMAP server returns it (CRLF line ends, except perhaps the
    last): the octets RETR sends beyond it depend on its last two alone."""
    message = b"\r\n".join(lines) + end
    if message:
        assert tails.added(message[-2:]) == normalised_size(message) - len(message)


def test_the_status_of_an_examine() -> None:
    data = [b"3 EXISTS", b"OK [UIDNEXT 9] x", b"OK [HIGHESTMODSEQ 12345678901234] m", b"1 RECENT"]
    assert wire.selected_status(data) == wire.Status(3, 9, 12345678901234)
    assert wire.selected_status([b"OK [NOMODSEQ] none", bytearray(b"2 EXISTS")]) == wire.Status(
        None, None, None
    )


def test_an_esearch_set_is_read_as_merged_ranges() -> None:
    line = b'(TAG "A7") UID ALL 7,1:3,4,10:9'
    assert wire.esearch_all([line], limit=7) == [(1, 4), (7, 7), (9, 10)]
    assert wire.esearch_all([b'(TAG "A7") UID'], limit=0) == []  # nothing matched


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ([b'(TAG "A1") UID ALL 1:4000000000'], "more UIDs than"),
        ([b'(TAG "A1") UID ALL 1::3'], "malformed"),
        ([b"SEARCH 1 2"], "without an ESEARCH"),
        ([], "without an ESEARCH"),
    ],
)
def test_a_bad_esearch_answer_is_refused(data: list[bytes], problem: str) -> None:
    with pytest.raises(wire.ProtocolError, match=problem):
        wire.esearch_all(data, limit=10)


def test_flags_are_upper_cased_and_absent_flags_are_none() -> None:
    (fetched,) = wire.parse_fetches([b"1 FETCH (UID 4 FLAGS (\\Seen $Junk popbridge_done))"])
    assert wire.flags(fetched) == frozenset({"\\SEEN", "$JUNK", "POPBRIDGE_DONE"})
    (bare,) = wire.parse_fetches([b"1 FETCH (UID 4)"])
    assert wire.flags(bare) is None
