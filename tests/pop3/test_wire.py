"""Property and example tests of the body encoder: CRLF, stuffing, TOP, any chunking."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popbridge.pop3.wire import BodyEncoder, normalise, normalised_size, unstuff

# bodies rich in the bytes that matter: dots, CR, LF, and line starts
bodies = st.lists(
    st.sampled_from([b".", b"\r", b"\n", b"a", b"..", b"\r\n", b"x.y"]), max_size=60
).map(b"".join) | st.binary(max_size=300)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def encode(chunks: list[bytes], body_lines: int | None = None) -> tuple[bytes, BodyEncoder]:
    encoder = BodyEncoder(body_lines=body_lines)
    wire = b"".join(encoder.feed(chunk) for chunk in chunks) + encoder.finish()
    return wire, encoder


def expected_message(data: bytes) -> bytes:
    body = normalise(data)
    return body if not body or body.endswith(b"\r\n") else body + b"\r\n"


@given(bodies, st.lists(st.integers(0, 400), max_size=12))
def test_unstuff_of_encoding_is_normalised_body_for_any_chunking(
    data: bytes, cuts: list[int]
) -> None:
    wire, encoder = encode(chunked(data, cuts))
    assert unstuff(wire) == expected_message(data)
    assert encoder.octets == normalised_size(data) == len(expected_message(data))


@given(bodies, st.lists(st.integers(0, 400), max_size=12))
def test_wire_lines_are_crlf_terminated_and_never_a_lone_dot(data: bytes, cuts: list[int]) -> None:
    wire, _ = encode(chunked(data, cuts))
    lines = wire.split(b"\r\n")
    assert lines[-1] == b"" and lines[-2] == b"."
    assert b"." not in lines[:-2]  # only the terminator is a lone dot
    assert all(b"\r" not in line and b"\n" not in line for line in lines)


@settings(max_examples=300)
@given(bodies, st.lists(st.integers(0, 400), max_size=12), st.integers(0, 8))
def test_top_is_prefix_of_retr_with_header_and_n_lines(
    data: bytes, cuts: list[int], n: int
) -> None:
    full = expected_message(data)
    top_wire, _ = encode(chunked(data, cuts), body_lines=n)
    top = unstuff(top_wire)
    assert full.startswith(top)
    header_end = 2 if full.startswith(b"\r\n") else full.find(b"\r\n\r\n") + 4
    if header_end < 4 and not full.startswith(b"\r\n"):
        assert top == full  # no blank line: the whole message is header
        return
    body_lines = full[header_end:].split(b"\r\n")[:-1]
    assert top == full[:header_end] + b"".join(line + b"\r\n" for line in body_lines[:n])


@pytest.mark.parametrize(
    ("body", "wire"),
    [
        (b"a\n.\nb\n", b"a\r\n..\r\nb\r\n.\r\n"),  # conformance P-5.2
        (b".\r\n..\r\n.foo\r\na.b\r\n", b"..\r\n...\r\n..foo\r\na.b\r\n.\r\n"),  # P-1.7
        (b"Subject: x\r\n\r\nno-newline", b"Subject: x\r\n\r\nno-newline\r\n.\r\n"),  # P-5.3
        (b"", b".\r\n"),
        (b"a\rb", b"a\r\nb\r\n.\r\n"),
    ],
)
def test_examples_from_the_checklist(body: bytes, wire: bytes) -> None:
    assert encode([body])[0] == wire


def test_dot_after_line_end_split_across_chunks_is_stuffed() -> None:
    assert encode([b"a\r", b"\n", b".b\r\n"])[0] == b"a\r\n..b\r\n.\r\n"


def test_top_zero_lines_sends_only_the_header_block() -> None:
    wire, encoder = encode([b"A: 1\r\nB: 2\r\n", b"\r\nbody1\r\nbody2\r\n"], body_lines=0)
    assert wire == b"A: 1\r\nB: 2\r\n\r\n.\r\n"
    assert encoder.done


def test_top_huge_count_equals_retr() -> None:
    data = b"A: 1\r\n\r\n" + b"line\r\n" * 50
    assert encode([data], body_lines=99999999)[0] == encode([data])[0]


def test_unstuff_refuses_an_unterminated_body() -> None:
    with pytest.raises(ValueError):
        unstuff(b"abc\r\n")
