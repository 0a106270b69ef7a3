"""POP3 replies as frozen values, and their exact wire form.

A reply is a positive or negative status line, optionally with a response code in
brackets (RFC 2449 section 8) and, for listings such as CAPA, LIST and UIDL, data lines
ending in the "." terminator (RFC 1939 section 3). Status lines are capped at 512 octets
(RFC 2449 section 4), and free text may never begin with "[" unless it is a real code
(RFC 2449 section 6.4), so the text is checked here rather than trusted to callers.
"""

from __future__ import annotations

from dataclasses import dataclass

from popbridge.errors import Code
from popbridge.pop3.wire import stuff

MAX_STATUS_LINE = 512  # octets including CRLF, RFC 2449 section 4


@dataclass(frozen=True, slots=True)
class Ok:
    """`+OK text`, followed by data lines and "." when `lines` is given."""

    text: str = ""
    lines: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Err:
    """`-ERR [CODE] text`."""

    text: str
    code: Code | None = None


@dataclass(frozen=True, slots=True)
class Continue:
    """A SASL challenge: `+ base64` (RFC 5034 section 4); empty means `+ `."""

    challenge: str = ""


Reply = Ok | Err | Continue


def _status_line(status: str, code: Code | None, text: str) -> bytes:
    if text.startswith("["):
        raise ValueError("free text must not look like a response code")
    parts = [status]
    if code is not None:
        parts.append(f"[{code.value}]")
    if text:
        parts.append(text)
    line = " ".join(parts).encode("ascii") + b"\r\n"
    if len(line) > MAX_STATUS_LINE or b"\r" in line[:-2] or b"\n" in line[:-2]:
        raise ValueError("status line too long or not a single line")
    return line


def encode(reply: Reply) -> bytes:
    """The exact bytes of `reply` on the wire."""
    if isinstance(reply, Continue):
        return b"+ " + reply.challenge.encode("ascii") + b"\r\n"
    if isinstance(reply, Err):
        return _status_line("-ERR", reply.code, reply.text)
    head = _status_line("+OK", None, reply.text)
    if reply.lines is None:
        return head
    return head + _data_lines(reply.lines) + b".\r\n"


def _data_lines(lines: tuple[str, ...]) -> bytes:
    """The data lines, each ending in CRLF, byte-stuffed (RFC 1939 section 3).

    A UIDL listing has a line per message, so the lines are joined and encoded at once
    and stuffed by one substitution, not one line at a time.
    """
    if not lines:
        return b""
    text = "\r\n".join(lines)
    ends = len(lines) - 1
    if not text.count("\r") == text.count("\n") == text.count("\r\n") == ends:
        raise ValueError("a data line holds a line end")
    return stuff(text.encode("ascii") + b"\r\n", at_line_start=True)
