"""The format=raw reply read as it arrives: for any message, any member order, any escaping
and any split into pieces, the same octets as decoding the whole reply at once."""

from __future__ import annotations

import base64
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.gmail.rawstream import Base64Url, RawScanner
from popbridge.errors import BackendFailure
from popbridge.upstream.lines import Normaliser

MEMBERS = {
    "id": st.text("0123456789abcdef", min_size=1, max_size=16),
    "labelIds": st.lists(st.sampled_from(["INBOX", "UNREAD", "Label_1", 'a "q", }]'])),
    "snippet": st.text(max_size=30),
    "sizeEstimate": st.integers(0, 10**9),
    "internalDate": st.integers(0, 10**13).map(str),
}


def model(message: bytes) -> bytes:
    out = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    return out if not out or out.endswith(b"\r\n") else out + b"\r\n"


@given(
    message=st.binary(max_size=600),
    others=st.fixed_dictionaries({}, optional=MEMBERS),
    position=st.integers(0, 5),
    escape=st.booleans(),
    padded=st.booleans(),
    indent=st.sampled_from([None, 1]),
    cuts=st.lists(st.integers(1, 40), min_size=1, max_size=20),
)
def test_any_reply_split_anyhow_decodes_to_the_message(
    message: bytes, others: dict[str, object], position: int, escape: bool, padded: bool,
    indent: int | None, cuts: list[int],
) -> None:  # fmt: skip
    raw = base64.urlsafe_b64encode(message).decode()
    raw = raw if padded else raw.rstrip("=")
    items = list(others.items())
    items.insert(min(position, len(items)), ("raw", raw))
    text = json.dumps(dict(items), indent=indent)
    if escape:  # Google's encoder writes "=" as \u003d
        text = text.replace("=", "\\u003d")
    data = text.encode()
    scanner, normaliser, out, at = RawScanner(), Normaliser(), b"", 0
    for cut in cuts * (len(data) + 1):
        if at >= len(data):
            break
        out += normaliser.feed(scanner.feed(data[at : at + cut]))
        at += cut
    scanner.finish()
    out += normaliser.finish()
    assert out == model(message)
    assert {k: v for k, v in scanner.fields.items() if k != "raw"} == others


@pytest.mark.parametrize(
    "text", [b"A", b"AB=C", b"AB==C", b"A+B/", b"AB\x00C", b"AAAAA"],
    ids=["one-char", "inner-pad", "after-pad", "plain-base64", "control", "dangling"],
)  # fmt: skip
def test_text_outside_base64url_is_refused(text: bytes) -> None:
    with pytest.raises(BackendFailure):
        _decode_whole(text)


@pytest.mark.parametrize(
    "reply",
    [b'["raw"]', b'{"raw": "QQ\\u00e9"}', b'{"raw": "QQ\\x"}', b'{"raw": "QQ"} x',
     b'{"raw": "QQ", }', b'{"id": tru}', b'{"raw" "QQ"}'],
    ids=["array", "non-ascii-escape", "bad-escape", "trailing", "trailing-comma", "bad-value",
         "no-colon"],
)  # fmt: skip
def test_a_reply_that_is_not_one_flat_object_is_refused(reply: bytes) -> None:
    with pytest.raises(BackendFailure):
        _scan_whole(reply)


def _decode_whole(text: bytes) -> bytes:
    decoder = Base64Url()
    return decoder.feed(text) + decoder.finish()


def _scan_whole(reply: bytes) -> bytes:
    scanner = RawScanner()
    return scanner.feed(reply) + scanner.finish()
