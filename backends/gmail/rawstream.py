"""A Gmail message's `raw` form, decoded as it arrives: JSON, base64url, then CRLF line ends.

`users.messages.get` with `format=raw` returns the whole RFC 2822 message base64url-encoded
inside a JSON object; the API offers no other download of the message and no range. This
module owns reading that reply in bounded memory: `RawScanner` walks the top-level JSON
object as its bytes arrive, keeps the small members (id, labelIds, internalDate, ...) and
hands the `raw` string on in pieces, `Base64Url` decodes those pieces (RFC 4648 section 5,
padding optional, anything outside the alphabet refused); `popbridge.upstream.lines`'
`Normaliser` then makes every line end CRLF and ends an unterminated last line with one
(RFC 1939 sections 3 and 11), so what is counted at listing time is exactly what RETR
sends. A JSON escape inside `raw` (Google's encoder writes "=" as \\u003d) is decoded too.
"""

from __future__ import annotations

import binascii
import json
import re
from typing import Any

from popbridge.errors import BackendFailure

_URLSAFE = bytes.maketrans(b"-_", b"+/")
_ALPHABET = re.compile(rb"[A-Za-z0-9\-_]*")
MAX_MEMBER = 64 * 1024  # octets of any member other than raw (labelIds, snippet, ...)
_WS = b" \t\r\n"
_ESCAPES = {ord('"'): b'"', ord("\\"): b"\\", ord("/"): b"/"}


class Base64Url:
    """base64url text in pieces of any length, decoded in whole quanta (RFC 4648 section 5)."""

    def __init__(self) -> None:
        self._held = b""
        self._ended = False

    def feed(self, text: bytes) -> bytes:
        if self._ended and text.strip(b"="):
            raise BackendFailure("raw: data after the base64url padding")
        body = text.rstrip(b"=")
        if len(body) != len(text):
            self._ended = True
        if not _ALPHABET.fullmatch(body):
            raise BackendFailure("raw: not base64url text")
        data = self._held + body
        whole = len(data) - len(data) % 4
        self._held = data[whole:]
        return _decode(data[:whole])

    def finish(self) -> bytes:
        if len(self._held) % 4 == 1:
            raise BackendFailure("raw: truncated base64url text")
        held, self._held = self._held, b""
        return _decode(held + b"=" * (-len(held) % 4))


def _decode(text: bytes) -> bytes:
    try:
        return binascii.a2b_base64(text.translate(_URLSAFE), strict_mode=True)
    except binascii.Error:
        raise BackendFailure("raw: not base64url text") from None


class RawScanner:
    """The top-level JSON object of a Message (RFC 8259), fed in pieces: `feed` returns the
    next decoded octets of `raw`, `fields` holds every other member once read, `in_raw`
    says the raw member has begun."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.in_raw = False
        self._state = "start"
        self._buffer = b""  # the current key or non-raw value, or an escape cut in two
        self._key = ""
        self._depth = 0
        self._quoted = False
        self._escaped = False
        self._decoder = Base64Url()

    def feed(self, piece: bytes) -> bytes:
        out = bytearray()
        position = 0
        while position < len(piece):
            if self._state == "raw":
                position = self._raw(piece, position, out)
            else:
                position = self._structure(piece, position)
        return bytes(out)

    def finish(self) -> bytes:
        """The last decoded octets; BackendFailure unless the object ended properly."""
        if self._state != "done":
            raise BackendFailure("raw: the reply ended inside its JSON object")
        if "raw" not in self.fields:
            raise BackendFailure("raw: the reply has no raw member")
        return b""

    def _raw(self, piece: bytes, position: int, out: bytearray) -> int:
        if self._buffer:  # an escape sequence split across pieces
            if len(self._buffer) == 1:
                self._buffer += piece[position : position + 1]
                position += 1
            needed = 6 if self._buffer[1:2] == b"u" else 2
            take = piece[position : position + needed - len(self._buffer)]
            self._buffer += take
            position += len(take)
            if len(self._buffer) < needed:
                return position
            out += self._decoder.feed(_unescape(self._buffer))
            self._buffer = b""
            return position
        quote = piece.find(b'"', position)
        slash = piece.find(b"\\", position)
        stops = [i for i in (quote, slash) if i >= 0]
        end = min(stops) if stops else len(piece)
        out += self._decoder.feed(piece[position:end])
        if end == len(piece):
            return end
        if end == slash:
            self._buffer = b"\\"
            return end + 1
        out += self._decoder.finish()
        self.fields["raw"] = True
        self._state = "after"
        return end + 1

    def _structure(self, piece: bytes, position: int) -> int:
        byte = piece[position]
        state = self._state
        if state == "value":
            return self._value(piece, position)
        if state == "key" and self._quoted:
            return self._key_text(piece, position)
        if byte in _WS:
            return position + 1
        char = chr(byte)
        if state == "start" and char == "{":
            self._state = "key"
        elif state == "key" and char == '"':
            self._quoted, self._buffer = True, b'"'
        elif state == "key" and char == "}" and not self.fields:
            self._state = "done"
        elif state == "colon" and char == ":":
            self._state = "value"
        elif state == "after" and char == ",":
            self._state = "key"
        elif state == "after" and char == "}":
            self._state = "done"
        else:
            raise BackendFailure(f"raw: unexpected {char!r} in the reply's JSON ({state})")
        return position + 1

    def _key_text(self, piece: bytes, position: int) -> int:
        end = piece.find(b'"', position)
        while end > 0 and piece[end - 1] == ord("\\"):
            end = piece.find(b'"', end + 1)
        if end < 0:
            self._grow(piece[position:])
            return len(piece)
        self._grow(piece[position : end + 1])
        self._key = _loads(self._buffer)
        self._buffer, self._quoted, self._state = b"", False, "colon"
        return end + 1

    def _value(self, piece: bytes, position: int) -> int:
        if not self._buffer:
            while position < len(piece) and piece[position] in _WS:
                position += 1
            if position == len(piece):
                return position
            if self._key == "raw":
                if piece[position] != ord('"'):
                    raise BackendFailure("raw: the raw member is not a string")
                self._state, self.in_raw = "raw", True
                return position + 1
        for index in range(position, len(piece)):
            byte = piece[index]
            if self._escaped:
                self._escaped = False
            elif self._quoted:
                self._escaped = byte == ord("\\")
                self._quoted = byte != ord('"')
            elif byte == ord('"'):
                self._quoted = True
            elif byte in b"[{":
                self._depth += 1
            elif byte in b"]}" and self._depth:
                self._depth -= 1
            elif byte in b",}" and not self._depth:
                self._grow(piece[position:index])
                self.fields[self._key] = _loads(self._buffer)
                self._buffer, self._state = b"", "after"
                return index  # the separator is read in the "after" state
        self._grow(piece[position:])
        return len(piece)

    def _grow(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > MAX_MEMBER:
            raise BackendFailure(f"raw: a member of the reply exceeds {MAX_MEMBER} octets")


def _loads(text: bytes) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BackendFailure("raw: a member of the reply is not JSON") from None


def _unescape(escape: bytes) -> bytes:
    """One JSON escape inside raw (RFC 8259 section 7); only ASCII can be base64url."""
    if escape[1:2] == b"u":
        try:
            code = int(escape[2:6], 16)
        except ValueError:
            raise BackendFailure("raw: a bad escape in the raw member") from None
        if code < 0x80:
            return bytes([code])
    elif escape[1] in _ESCAPES:
        return _ESCAPES[escape[1]]
    raise BackendFailure("raw: a character outside base64url in the raw member")
