"""Lines as POP3 sends them: where TOP's answer ends, and line ends made CRLF as they arrive.

RFC 1939 §7: TOP sends the header, the blank line separating it from the body, and then
the first n lines of the body. The same rule stops a backend's download early and trims
what the core sends, so it lives here once. `TopCut` reads raw bytes as they arrive, in
pieces of any size, with CRLF or bare LF line ends (a header end split across pieces is
still found), and says where the wanted part ends. `Normaliser` turns pieces into the form
POP3 sends and counts them (RFC 1939 §3, §11), for a backend whose upstream knows no exact
size and must count a download itself.
"""

from __future__ import annotations

import re

_BLANK = (b"", b"\r")  # a line with nothing before its LF but an optional CR
CRLF = b"\r\n"
_LINE_END = re.compile(rb"\r\n|\r|\n")
_BARE_CR = re.compile(rb"\r(?!\n)")


def normalise(data: bytes) -> bytes:
    """Turn every CRLF, bare CR and bare LF into CRLF (RFC 1939 section 3)."""
    # With no CR lacking its LF, every CR starts a CRLF; then as many LFs as CRs means
    # every LF ends one. Two single-byte counts and one literal-led search: the common
    # (canonical) case costs no copy.
    if data.count(b"\n") == data.count(b"\r") and _BARE_CR.search(data) is None:
        return data
    return _LINE_END.sub(CRLF, data)


class TopCut:
    """Finds the end of the header plus `lines` body lines in a stream of pieces."""

    def __init__(self, lines: int, *, in_body: bool = False) -> None:
        self._lines = lines
        self._in_body = in_body  # True when the pieces start at the body (IMAP TEXT)
        self._line = b""  # the current header line so far (its last two bytes suffice)
        self._seen = 0
        self.done = False

    def cut(self, piece: bytes) -> int | None:
        """The offset in `piece` where the wanted part ends, or None if it goes on.

        After the end was found, every later piece is cut at 0.
        """
        if self.done:
            return 0
        position = 0 if self._in_body else self._header_end(piece)
        if position < 0:
            return None
        while self._seen < self._lines:
            newline = piece.find(b"\n", position)
            if newline < 0:
                return None
            self._seen += 1
            position = newline + 1
        self.done = True
        return position

    def _header_end(self, piece: bytes) -> int:
        """The offset just after the blank line ending the header, or -1 if not in `piece`."""
        position = 0
        while (newline := piece.find(b"\n", position)) >= 0:
            line = self._line + piece[position:newline]
            self._line = b""
            position = newline + 1
            if line in _BLANK:
                self._in_body = True
                return position
        self._line = (self._line + piece[position:])[-2:]
        return -1


class Normaliser:
    """Raw pieces in, pieces with every line end CRLF out; a CR ending one piece and an LF
    starting the next are one line end. `finish` adds the CRLF an unterminated last line
    needs. `octets` counts what came out."""

    def __init__(self) -> None:
        self._pending_cr = False
        self._last = b""
        self.octets = 0

    def feed(self, chunk: bytes) -> bytes:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            # the LF that may complete this line end is in the next chunk
            chunk = chunk[:-1]
            self._pending_cr = True
        return self._out(normalise(chunk))

    def finish(self) -> bytes:
        tail = CRLF if self._pending_cr else b""
        self._pending_cr = False
        if not tail and self.octets and not self._last.endswith(b"\n"):
            tail = CRLF
        return self._out(tail)

    def _out(self, data: bytes) -> bytes:
        if data:
            self.octets += len(data)
            # never a copy of the piece: it can be megabytes on the RETR path
            self._last = data[-2:] if len(data) >= 2 else (self._last + data)[-2:]
        return data
