"""TOP's cut point: for any message and any split into pieces, the same as a line model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from popbridge.upstream.lines import Normaliser, TopCut

LINE = st.sampled_from([b"", b"\r", b"a", b"Subject: x", b"body text", b"\r\r", b"x\r"])
ENDING = st.sampled_from([b"\n", b"\r\n"])


def model(message: bytes, lines: int) -> bytes:
    """RFC 1939 §7 read line by line: header, blank line, then `lines` body lines."""
    pieces = message.split(b"\n")  # bytes.splitlines would split at a lone CR too
    parts = [p + b"\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    out, in_body, seen = [], False, 0
    for part in parts:
        if not in_body:
            out.append(part)
            in_body = part.rstrip(b"\n") in (b"", b"\r") and part.endswith(b"\n")
            if in_body and lines == 0:
                break
            continue
        if seen >= lines:
            break
        out.append(part)
        seen += part.endswith(b"\n")
    return b"".join(out)


def run(cut: TopCut, message: bytes, splits: list[int]) -> bytes:
    kept, start = [], 0
    for end in [*sorted(set(splits)), len(message)]:
        piece = message[start:end]
        start = end
        at = cut.cut(piece)
        kept.append(piece if at is None else piece[:at])
    return b"".join(kept)


@given(
    st.lists(st.tuples(LINE, ENDING), max_size=12),
    st.integers(0, 6),
    st.lists(st.integers(0, 200), max_size=6),
)
def test_the_cut_equals_the_line_model(
    lines: list[tuple[bytes, bytes]], n: int, splits: list[int]
) -> None:
    message = b"".join(text + end for text, end in lines)
    splits = [s for s in splits if s <= len(message)]
    assert run(TopCut(n), message, splits) == model(message, n)


def test_a_header_end_split_across_pieces_is_found() -> None:
    cut = TopCut(1)
    assert cut.cut(b"Subject: a\r") is None
    assert cut.cut(b"\n\r") is None
    assert cut.cut(b"\nline one\r\nline two\r\n") == len(b"\nline one\r\n")
    assert cut.done
    assert cut.cut(b"more") == 0


def test_in_body_counts_from_the_first_byte() -> None:
    cut = TopCut(2, in_body=True)
    assert cut.cut(b"one\ntwo\nthree\n") == len(b"one\ntwo\n")


def test_a_message_without_a_header_starts_with_its_blank_line() -> None:
    assert TopCut(0).cut(b"\r\nbody\r\n") == 2


def crlf_model(data: bytes) -> bytes:
    """RFC 1939 §3, §11 on the whole message: CRLF, CR and LF each end a line, sent as CRLF;
    an unterminated last line gets one."""
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    out = b"\r\n".join(lines)
    return out if not out or out.endswith(b"\r\n") else out + b"\r\n"


@given(
    st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"xy", b"\n\r"]), max_size=40),
    st.lists(st.integers(1, 7), min_size=1, max_size=40),
)
def test_normaliser_matches_the_whole_message_model_for_any_split(
    parts: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(parts)
    normaliser, out, position = Normaliser(), b"", 0
    for cut in cuts * (len(data) + 1):
        if position >= len(data):
            break
        out += normaliser.feed(data[position : position + cut])
        position += cut
    out += normaliser.finish()
    assert out == crlf_model(data)
    assert normaliser.octets == len(out)
