"""Unit tests of `backends.imap.wire`: the IMAP syntax the backend sends and parses, no I/O."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.imap import logins, wire


@pytest.mark.parametrize(
    ("uids", "expected"),
    [([1], "1"), ([3, 1, 2], "1:3"), ([1, 2, 4, 6, 7, 8], "1:2,4,6:8"), ([5, 5], "5")],
)
def test_uid_set_names_exactly_the_given_uids(uids: list[int], expected: str) -> None:
    assert wire.uid_set(uids) == expected


@given(st.sets(st.integers(min_value=1, max_value=200), min_size=1))
def test_uid_set_round_trips(uids: set[int]) -> None:
    named: set[int] = set()
    for part in wire.uid_set(uids).split(","):
        first, _, last = part.partition(":")
        named.update(range(int(first), int(last or first) + 1))
    assert named == uids


def test_batches_are_bounded_and_complete() -> None:
    chunks = list(wire.batches(list(range(1201)), 500))
    assert [len(c) for c in chunks] == [500, 500, 201]
    assert [uid for chunk in chunks for uid in chunk] == list(range(1201))


def test_quote_escapes_and_refuses_what_a_quoted_string_cannot_hold() -> None:
    assert wire.quote('a"b\\c') == '"a\\"b\\\\c"'
    for bad in ("a\r\nb", "a\nb", "a\x00", "\u00e4"):
        with pytest.raises(ValueError):
            wire.quote(bad)


def test_mailbox_names_use_modified_utf7() -> None:
    # RFC 3501 5.1.3's own example, plus "&" and a plain name.
    assert wire.encode_mailbox("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e") == (
        "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    )
    assert wire.encode_mailbox("A&B") == "A&-B"
    assert wire.encode_mailbox("INBOX") == "INBOX"


@pytest.mark.parametrize(
    ("text", "ok"),
    [("$Forwarded", True), ("popbridge-done", True), ("\\Seen", False), ("a b", False),
     ("a)", False), ('a"', False), ("a]", False), ("", False), ("a%", False), ("\u00e4", False)],
)  # fmt: skip
def test_keywords_must_be_atoms(text: str, ok: bool) -> None:
    assert wire.is_keyword(text) is ok


def test_identity_parsing_is_strict() -> None:
    assert wire.parse_identity("1700000000.42") == (1700000000, 42)
    for bad in ("1.2.3", "x.1", "1.", ".1", "\u0661.1", "1 .2", "12345678901.1"):
        assert wire.parse_identity(bad) is None


def test_sasl_responses() -> None:
    assert base64.b64decode(logins.sasl_plain("\u00fc", "p w")) == b"\0\xc3\xbc\0p w"
    token = base64.b64decode(logins.xoauth2("u@x", "tok"))
    assert token == b"user=u@x\x01auth=Bearer tok\x01\x01"
    for user, secret in (("a\r\nb", "p"), ("a", "p\x00"), ("", "p"), ("a" * 2000, "p")):
        with pytest.raises(ValueError):
            logins.sasl_plain(user, secret)
    with pytest.raises(ValueError):
        logins.login_arguments("\u00e4", "p")
    assert logins.login_arguments('a"b', "c\\d") == ('"a\\"b"', '"c\\\\d"')


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=5), st.data())
def test_lines_end_cuts_after_a_line_or_literal_and_always_advances(
    data: bytes, most: int, draw: st.DataObject
) -> None:
    start = draw.draw(st.integers(0, max(len(data) - 1, 0)))
    end = wire.lines_end(data, start, most)
    assert start < end <= len(data) or start == end == len(data) == 0
    assert data[start:end].count(b"\n") <= most
    assert end == len(data) or data[end - 1 : end] == b"\n"


def test_lines_end_stops_after_a_literal_announcement() -> None:
    data = b"x\r\n* 1 FETCH (BODY[] {5}\r\nab\ncd)\r\n"
    assert data[: wire.lines_end(data, 0, 200)].endswith(b"{5}\r\n")
    assert wire.lines_end(data, 3, 200) == wire.lines_end(data, 0, 200)
    assert wire.lines_end(data, 0, 1) == 3


def test_fetch_parsing_handles_literals_quoted_nil_and_order() -> None:
    parts: list[wire.Part] = [
        b"12 FETCH (RFC822.SIZE 30 UID 7 BODY[HEADER.FIELDS (MESSAGE-ID)] {4}",
        bytearray(b"ab)\r"),
        b' FLAGS (\\Seen $x) BODY[]<0> "q\\"uote" BODY[TEXT] NIL)',
        b"* 3 FETCH (FLAGS ())",
        b"5 EXPUNGE",
    ]
    first, second = wire.parse_fetches(parts)
    assert first.uid == 7
    assert first.number("RFC822.SIZE") == 30
    assert first.prefixed("BODY[HEADER.FIELDS") == b"ab)\r"
    assert first.body("", 0) == b'q"uote'
    assert first.body("TEXT") is None
    assert first.items["FLAGS"] == [b"\\Seen", b"$x"]
    assert second.uid is None


@pytest.mark.parametrize(
    "parts",
    [[b"1 FETCH (UID 1"], [b"1 FETCH (UID 1 BODY[] {5}"], [b"1 FETCH (UID)"],
     [b"1 FETCH (UID 1 BODY[] {3}", bytearray(b"toolong"), b")"], [b'1 FETCH (UID "1)']],
)  # fmt: skip
def test_malformed_fetch_is_a_protocol_error(parts: list[wire.Part]) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.parse_fetches(parts)


def test_fetch_tokens_cover_every_token_kind() -> None:
    parts: list[wire.Part] = [
        b'* 4 FETCH (X-A nIl X-B "a\\\\b\\"c" X-C ("" NIL BODY[1.MIME]<0>) X-D [a b]c  X-E {2+}',
        bytearray(b"(("),
        b" UID 9 X-F a{3})  ",
    ]
    (fetched,) = wire.parse_fetches(parts)
    assert fetched.uid == 9
    assert fetched.items == {
        "X-A": None,
        "X-B": b'a\\b"c',
        "X-C": [b"", None, b"BODY[1.MIME]<0>"],
        "X-D": b"[a b]c",
        "X-E": b"((",
        "UID": b"9",
        "X-F": b"a{3}",
    }
    assert type(fetched.items["X-E"]) is bytes


@pytest.mark.parametrize(
    ("parts", "message"),
    [([b'1 FETCH (A "x\\"'], "unterminated quoted string"),
     ([b"1 FETCH (A {2} )", bytearray(b"ab")], "malformed literal"),
     ([b"1 FETCH (A {x}"], "malformed literal"),
     # a size past 18 digits is refused, not handed to int() (which fails at 4,300 digits)
     ([b"1 FETCH (A {" + b"9" * 5000 + b"}", bytearray(b"x")], "malformed literal"),
     ([b"1 FETCH (A b]c)"], "unexpected ']c)'"),
     ([b"1 FETCH (A BODY[x)"], "unexpected '[x)'"),
     ([b"1 FETCH (A 1))"], "unbalanced parentheses"),
     ([b"1 FETCH (A {1}", bytearray(b"x"), b")", b")"], "unbalanced parentheses"),
     ([b"1 FETCH (A {1}", b"x)"], "announced literal missing"),
     ([b"1 FETCH (A 1)", bytearray(b"x")], "literal without announcement"),
     ([b"1 FETCH (A 1 B)"], "odd number of FETCH items"),
     ([b"1 FETCH ((A) 1)"], "FETCH item name is not an atom"),
     ([b"1 FETCH A"], "malformed FETCH response"),
     ([b'1 FETCH ("' + b'\\"' * 20000], "unterminated quoted string"),  # linear, not quadratic
     ([b"1 FETCH (A " + b"[" * 20000], "unexpected"),
     ([b"1 FETCH (A " + b"{" * 20000], "malformed literal")],
)  # fmt: skip
def test_malformed_fetch_errors_name_the_fault(parts: list[wire.Part], message: str) -> None:
    with pytest.raises(wire.ProtocolError, match=re.escape(message)):
        wire.parse_fetches(parts)


def test_list_parsing_reads_attributes_and_names() -> None:
    parts: list[wire.Part] = [
        b'(\\HasNoChildren \\Trash) "/" "Deleted Items"',
        b"() NIL INBOX",
        b'(\\Junk) "." {4}',
        bytearray(b"Sp m"),
    ]
    listed = wire.parse_list(parts)
    assert [(sorted(e.attributes), e.name) for e in listed] == [
        (["\\HASNOCHILDREN", "\\TRASH"], b"Deleted Items"),
        ([], b"INBOX"),
        (["\\JUNK"], b"Sp m"),
    ]


def test_status_text_helpers() -> None:
    assert wire.response_code(b"[AUTHENTICATIONFAILED] no") == "AUTHENTICATIONFAILED"
    assert wire.response_code(b"plain text") is None
    caps = wire.capabilities([b"CAPABILITY IMAP4rev1 Move"], b"[CAPABILITY UIDPLUS] ok", bare=False)
    assert caps == frozenset({"IMAP4REV1", "MOVE", "UIDPLUS"})
    assert wire.capabilities([], b"Logged in", bare=False) is None
    assert wire.uidvalidity([b"FLAGS ()", b"OK [UIDVALIDITY 123] ok"]) == 123
    assert wire.search_uids([b"5 3 3", b""]) == [3, 5]
    with pytest.raises(wire.ProtocolError):
        wire.search_uids([b"5 (MODSEQ 3)"])


def test_internal_date_and_message_id() -> None:
    assert wire.internal_date(b" 1-Feb-2024 10:00:00 +0130") == datetime(
        2024, 2, 1, 10, 0, tzinfo=timezone(timedelta(hours=1, minutes=30))
    )
    assert wire.internal_date(b"01-Feb-2024 10:00:00 -0000") == datetime(2024, 2, 1, 10, tzinfo=UTC)
    assert wire.internal_date(b"09-dEC-2024 23:59:59 -0745") == datetime(
        2024, 12, 9, 23, 59, 59, tzinfo=timezone(-timedelta(hours=7, minutes=45))
    )
    bad_dates: list[wire.Value] = [b"31-Feb-2024 10:00:00 +0000", b"1-Foo-2024 10:00:00 +0000"]
    bad_dates += [None, [b"x"], b"01-Feb-2024 10:00:00 +2400", b"01-Feb-2024 10:00:00 +0000x"]
    for bad in bad_dates:
        assert wire.internal_date(bad) is None
    assert wire.message_id(b"Message-ID:\r\n <a@b>\r\n\r\n") == "<a@b>"
    assert wire.message_id(b"message-id: <a@b> \r\n\r\n") == "<a@b>"
    assert wire.message_id(b"X: y\nMessage-ID:\n\t<a@b>\n\t c\n") == "<a@b> c"
    assert wire.message_id(b"\r\n") is None
    assert wire.printable(b"a\x1b[31mb\xff") == "a?[31mb?"


LISTING_LINE = (
    "* {n} FETCH (UID {uid} RFC822.SIZE {size} INTERNALDATE {date} "
    "BODY[HEADER.FIELDS (MESSAGE-ID)] {{{length}}}"
)


@given(
    n=st.integers(1, 10**6),
    uid=st.integers(0, 2**32),
    size=st.integers(0, 10**12),
    date=st.sampled_from(['"01-Jan-2024 00:00:00 +0000"', '"7-Feb-1999 23:59:59 -0130"',
                          '"a \\"quoted\\" date"', '""', "NIL"]),
    header=st.binary(max_size=120),
    lower=st.booleans(),
    cut=st.sampled_from([None, 0, 1]),
)  # fmt: skip
def test_the_listing_shortcut_reads_what_the_tokenizer_reads(
    n: int, uid: int, size: int, date: str, header: bytes, lower: bool, cut: int | None
) -> None:
    line = LISTING_LINE.format(n=n, uid=uid, size=size, date=date, length=len(header)).encode()
    if lower:
        line = line.lower()
    literal = bytearray(header if cut is None else header[cut:] + b"!")  # maybe a wrong length
    readable = date != "NIL" and "\\" not in date and len(literal) == len(header)
    assert_the_shortcut_agrees(wire.listing_entry, [line, literal, b")"], readable)


def assert_the_shortcut_agrees(
    shortcut: Callable[[list[wire.Part]], wire.Fetched | None],
    group: list[wire.Part],
    readable: bool,
) -> wire.Fetched | None:
    """`shortcut` reads `group` as the tokenizer does when `readable`, else leaves it to the
    tokenizer (which reads or refuses it as before); returns what the shortcut read."""
    fast = shortcut(group)
    line = group[0]
    assert isinstance(line, bytes)
    try:
        slow: wire.Fetched | None = wire.fetched_items(group, len(line.split(b"(")[0]))
    except wire.ProtocolError:
        slow = None
    if readable:
        assert slow is not None and fast == slow  # same UID, same items under the same names
    else:
        assert fast is None
    if slow is not None:
        assert wire.parse_fetches(group) == [slow]
    return fast


def test_the_listing_shortcut_leaves_other_shapes_to_the_tokenizer() -> None:
    line = b'* 1 FETCH (RFC822.SIZE 5 UID 9 INTERNALDATE "x" BODY[HEADER.FIELDS (MESSAGE-ID)] {2}'
    group: list[wire.Part] = [line, bytearray(b"ab"), b")"]
    assert wire.listing_entry(group) is None
    (fetched,) = wire.parse_fetches(group)
    assert fetched.uid == 9 and fetched.items["BODY[HEADER.FIELDS (MESSAGE-ID)]"] == b"ab"
    assert wire.listing_entry([line, b"ab", b")"]) is None  # a text line, not a literal
    assert wire.listing_entry([line, bytearray(b"ab")]) is None


@given(
    n=st.integers(1, 10**6),
    uid=st.integers(0, 2**32),
    origin=st.one_of(st.none(), st.integers(0, 10**12)),
    data=st.binary(max_size=120),
    lower=st.booleans(),
    cut=st.sampled_from([None, 0, 1]),
)
def test_the_body_shortcut_reads_what_the_tokenizer_reads(
    n: int, uid: int, origin: int | None, data: bytes, lower: bool, cut: int | None
) -> None:
    section = "BODY[]" if origin is None else f"BODY[]<{origin}>"
    line = f"* {n} FETCH (UID {uid} {section} {{{len(data)}}}".encode()
    if lower:
        line = line.lower()
    literal = bytearray(data if cut is None else data[cut:] + b"!")  # maybe a wrong length
    readable = len(literal) == len(data)
    fast = assert_the_shortcut_agrees(wire.body_entry, [line, literal, b")"], readable)
    assert fast is None or fast.body("", origin) == bytes(literal)


def test_the_body_shortcut_leaves_other_shapes_to_the_tokenizer() -> None:
    line = b"* 1 FETCH (BODY[]<0> {2}"
    group: list[wire.Part] = [line, bytearray(b"ab"), b" UID 9)"]
    assert wire.body_entry(group) is None
    (fetched,) = wire.parse_fetches(group)
    assert fetched.uid == 9 and fetched.body("", 0) == b"ab"
    flags = b"* 1 FETCH (UID 9 FLAGS (\\Seen) BODY[] {2}"
    assert wire.body_entry([flags, bytearray(b"ab"), b")"]) is None
    assert wire.body_entry([b"* 1 FETCH (UID 9 BODY[] {2}", b"ab", b")"]) is None
