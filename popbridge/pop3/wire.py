"""Wire rules for message bodies: CRLF normalisation, byte-stuffing, TOP trimming, sizes.

A message reaches the client as a multi-line response (RFC 1939 section 3): every line
ends in CRLF, a line that starts with "." gets another "." in front, and ".\r\n" ends it.
Backends hand us raw bytes in arbitrary chunks, possibly with bare LF or CR line ends, so
the encoder here is stateful: a CR at the end of one chunk and an LF at the start of the
next are one line end, and a "." after a line end split across chunks is still stuffed.
The octet count it keeps is the normalised size before stuffing, which is what LIST and
STAT must announce (RFC 1939 section 11). Work is done per chunk with bytes methods and
regular expressions, never per line in Python, so large bodies stream cheaply. The
expressions are literal-led on purpose: the regex engine scans for a literal first byte with
a fast search, which makes `sub` several times cheaper than `bytes.replace` on a body whose
lines often start with ".".
"""

from __future__ import annotations

import re

from popbridge.upstream.lines import CRLF, Normaliser, TopCut, normalise

__all__ = ["CRLF", "TERMINATOR", "BodyEncoder", "normalise", "normalised_size", "stuff", "unstuff"]

TERMINATOR = b".\r\n"
_DOT_LINE = re.compile(rb"\n\.")


def normalised_size(message: bytes) -> int:
    """The size LIST must announce for `message`, including a CRLF added to a last line."""
    body = normalise(message)
    return len(body) + (2 if body and not body.endswith(CRLF) else 0)


class _TopTrimmer:
    """Cuts normalised bytes after the header block plus `body_lines` lines (RFC 1939 §7)."""

    def __init__(self, body_lines: int) -> None:
        self._cut = TopCut(body_lines)

    @property
    def done(self) -> bool:
        return self._cut.done

    def take(self, data: bytes) -> bytes:
        cut = self._cut.cut(data)
        return data if cut is None else data[:cut]


class BodyEncoder:
    """Turns raw message chunks into a byte-stuffed multi-line response body.

    `feed` returns the wire bytes for a chunk; `finish` returns the rest, including a
    CRLF for an unterminated last line (conformance P-5.3) and the ".\r\n" terminator.
    `octets` counts the normalised bytes sent, before stuffing. With `body_lines`, the
    output stops after the header and that many body lines, and `done` becomes true.
    """

    def __init__(self, *, body_lines: int | None = None) -> None:
        self._lines = Normaliser()  # line ends, and the CRLF an unterminated last line needs
        self._at_line_start = True
        self._trimmer = _TopTrimmer(body_lines) if body_lines is not None else None
        self.octets = 0

    @property
    def done(self) -> bool:
        """True once TOP has all it needs; the caller may stop feeding."""
        return self._trimmer is not None and self._trimmer.done

    def feed(self, chunk: bytes) -> bytes:
        return self._emit(self._lines.feed(chunk))

    def finish(self) -> bytes:
        # what TOP trimmed away needs no line end: `_emit` drops it once done
        return self._emit(self._lines.finish()) + TERMINATOR

    def _emit(self, data: bytes) -> bytes:
        if self._trimmer is not None:
            data = self._trimmer.take(data)
        if not data:
            return b""
        self.octets += len(data)
        stuffed = stuff(data, at_line_start=self._at_line_start)
        self._at_line_start = data.endswith(b"\n")
        return stuffed


def stuff(data: bytes, *, at_line_start: bool) -> bytes:
    """RFC 1939 section 3: a "." opening a line is doubled; `at_line_start` says whether
    `data` begins a line. One substitution for all of `data` (`data` itself if none)."""
    stuffed = _DOT_LINE.sub(b"\n..", data)
    return b"." + stuffed if at_line_start and data.startswith(b".") else stuffed


def unstuff(wire: bytes) -> bytes:
    """Undo byte-stuffing of a complete multi-line body ending in ".\\r\\n" (for tests/tools)."""
    if not wire.endswith(TERMINATOR) or not (wire == TERMINATOR or wire.endswith(b"\r\n.\r\n")):
        raise ValueError("not a terminated multi-line body")
    body = wire[: -len(TERMINATOR)]
    if body.startswith(b"."):
        body = body[1:]
    return body.replace(b"\r\n..", b"\r\n.")
