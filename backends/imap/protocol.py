"""aioimaplib, fenced in: its protocol class with the quirks that matter to us fixed.

This module is the only one that imports aioimaplib. It keeps aioimaplib's parser (literals
arrive as bytearray, untagged lines are routed to the pending command) and fixes what would
hurt a bridge: recursion of one stack frame per received line (RecursionError on bursts of
~1,000 lines), a quadratic "is this FETCH reply complete?" test, `"* "` stripped from the
middle of quoted strings, no SASL continuation support, logging of raw wire data (bodies,
credentials), unbounded literals and lines, and exceptions raised from `data_received` when
a server answers out of protocol, whose messages carry the pending command and with it the
password (asyncio would log them). Here any exception while reading discards the connection
with a scrubbed line, commands that carry credentials render without them, and a literal or
line over `max_literal` does the same. `Connection` drives it; it never sees aioimaplib's
types.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aioimaplib

from backends.imap import wire

# aioimaplib's own errors (state violations, unexpected tagged lines), for `Connection`.
LibraryError = aioimaplib.AioImapException


logger = logging.getLogger(__name__)


class _NoWireData(logging.Filter):
    """Drops aioimaplib's DEBUG and INFO records: every one of them carries wire data."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO


# aioimaplib logs every byte it sends and receives at DEBUG: message bodies, and credentials
# its scrubbing misses (LOGIN's escaped password, base64 XOAUTH2 tokens: conformance S-6); at
# INFO it logs lines it cannot place, which a broken or hostile server can fill with anything
# it was sent. A filter on its logger holds even when the root logger is set to DEBUG.
logging.getLogger("aioimaplib.aioimaplib").addFilter(_NoWireData())

# aioimaplib parses one received chunk with one stack frame per line, so a chunk of ~1,000
# short lines (a big UID FETCH, a burst of EXPUNGEs) raises RecursionError and kills the
# transport. We feed it at most this many lines at a time.
_MAX_LINES_PER_FEED = 200
# A whole untagged FETCH response whose one literal ends its first line: `* n FETCH (...
# {size}CRLF`, the literal, then `)CRLF` (what a listing or a body fetch returns per message).
# A literal announcement always ends its line (RFC 3501 section 4.3).
_FETCH_LITERAL = re.compile(rb"\* ([0-9]+ FETCH \([^\r\n]*\{([0-9]{1,18})\})\r\n")
_FETCH_END = b")\r\n"
# Commands whose arguments are credentials (RFC 3501 6.2.2, 6.2.3).
_CREDENTIAL_COMMANDS = frozenset({"LOGIN", "AUTHENTICATE"})


class _TooLarge(Exception):
    """A literal or line from the server exceeds `max_literal_size`."""


class _CredentialCommand(aioimaplib.Command):  # type: ignore[misc]
    """LOGIN or AUTHENTICATE: aioimaplib formats a command into its exception messages (an
    unexpected tagged reply names the pending command), so this one renders without its
    arguments (AUTHENTICATE keeps its mechanism name); only `wire` gives the line to send."""

    def wire(self) -> str:
        return str(aioimaplib.Command.__repr__(self))

    def __repr__(self) -> str:
        shown = self.args[:1] if self.name == "AUTHENTICATE" else ()
        return " ".join((self.tag, self.name, *shown, "[credentials not shown]"))

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Reply:
    """A tagged reply: `result` is OK/NO/BAD, `data` the untagged lines aioimaplib routed to
    the command (literals as bytearray), `text` the tagged status text."""

    result: str
    data: tuple[wire.Part, ...]
    text: bytes

    @property
    def ok(self) -> bool:
        return self.result == "OK"

    @property
    def code(self) -> str | None:
        return wire.response_code(self.text)

    def describe(self) -> str:
        return f"{self.result} {wire.printable(self.text)}"


class _FetchCommand(aioimaplib.FetchCommand):  # type: ignore[misc]
    """aioimaplib's FETCH command with its "reply complete?" test made incremental.

    The base `wait_data` rescans every line received so far each time a line arrives
    (quadratic: 75% of the time of a 3,000-message listing). The rule is unchanged: the
    text lines since the last `n FETCH (` line must have balanced parentheses; literal
    payloads (bytearray) do not count.
    """

    _depth = 0

    def append_to_resp(self, line: bytes | bytearray, result: str = "Pending") -> None:
        if isinstance(line, bytes):
            balance = line.count(b"(") - line.count(b")")
            fresh = self.FETCH_MESSAGE_DATA_RE.match(line)
            self._depth = balance if fresh else self._depth + balance
        super().append_to_resp(line, result)

    def wait_data(self) -> bool:
        return self._depth != 0

    def take_whole(self, line: bytes, literal: bytearray) -> bool:
        """Append a complete `n FETCH (... {size}` + literal + `)` response as the three
        `append_to_resp` calls for its parts would; False, appending nothing, unless its line
        opens exactly one parenthesis more than it closes (else `)` would not complete it)."""
        if line.count(b"(") - line.count(b")") != 1:
            return False
        self._resp_lines += (line, literal, _FETCH_END[:1])
        self._resp_result = "Pending"
        self._depth = 0
        self._reset_timer()
        return True


class ImapProtocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol with its wire-level quirks fixed; the parsing is unchanged."""

    # Attributes of the (untyped) base class that the overrides below use.
    state: str
    transport: Any
    incomplete_line: bytes
    current_command: Any
    pending_sync_command: Any
    pending_async_commands: dict[str, Any]

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_lost: Callable[[Any], None],
        *,
        peer: str = "",
        max_literal: int = 256 << 20,
    ) -> None:
        super().__init__(loop, on_lost)
        self.greeting: asyncio.Future[bytes] = loop.create_future()
        self.sasl_response: str | None = None
        self.commands_sent = 0
        self.failure: str | None = None  # why the connection was discarded while reading
        self._peer = peer
        self._max_literal = max_literal
        self._held: list[bytes] = []  # pieces of one line that has not ended yet
        self._held_size = 0

    def data_received(self, data: bytes) -> None:
        # The boundary where aioimaplib's exceptions would escape to asyncio, which logs
        # them with their message: the pending command, credentials included. Anything
        # raised while reading discards the connection with a scrubbed line instead.
        if self.failure is not None:
            return  # discarded: nothing more is read
        try:
            self._receive(data)
        except _TooLarge as exc:
            self._discard(str(exc))
        except Exception as exc:  # aioimaplib's Abort/Error, a parser failure, a recursion
            self._discard(_scrubbed(exc))

    def _discard(self, why: str) -> None:
        self.failure = why
        logger.warning("%s: discarding IMAP connection: %s", self._peer, why)
        self.transport.abort()

    def _receive(self, data: bytes) -> None:
        # Bounded feeding (see _MAX_LINES_PER_FEED); also skips the base class's eager
        # `log.debug("Received : %s" % data)`, which formats every body chunk even when off.
        # Pieces are cut by offset: slicing off "the rest" each time would copy a 256 KiB
        # read once per message it holds.
        data = self._whole_lines(data)
        start, size = 0, len(data)
        while start < size:
            literal = self._literal_remaining()
            if literal:  # literal payload is consumed without recursion: feed it whole
                end = min(start + literal, size)
            elif (end := self._whole_fetch(data, start)) > start:
                start = end
                continue
            else:  # within a response, one line: its end lets `_whole_fetch` take over again
                most = _MAX_LINES_PER_FEED if self.current_command is None else 1
                end = wire.lines_end(data, start, most)
            self._feed(data[start:end])  # the whole of `data` is not copied
            self._check_bounds()
            start = end

    def _whole_lines(self, data: bytes) -> bytes:
        """`data` with the held start of its first line, or b"" while a line goes on: a
        long line is joined once when it ends, not copied again with every read."""
        if self._literal_remaining() or self._ends_a_line(data):
            if self._held:
                data, self._held, self._held_size = b"".join((*self._held, data)), [], 0
            return data
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size + len(self.incomplete_line) > self._max_literal:
            raise _TooLarge(f"a response line exceeds max_literal_size ({self._max_literal})")
        return b""

    def _ends_a_line(self, data: bytes) -> bool:
        """Whether `data` holds a CRLF (RFC 3501 section 2.2), one split across reads too."""
        if b"\r\n" in data:
            return True
        before = self._held[-1] if self._held else self.incomplete_line
        return data[:1] == b"\n" and before[-1:] == b"\r"

    def _check_bounds(self) -> None:
        command = self.current_command
        announced = int(command._expected_size) if command is not None else 0
        if announced > self._max_literal:
            raise _TooLarge(
                f"a literal of {announced} octets exceeds max_literal_size ({self._max_literal})"
            )
        if len(self.incomplete_line) > self._max_literal:
            raise _TooLarge(f"a response line exceeds max_literal_size ({self._max_literal})")

    def _whole_fetch(self, data: bytes, start: int) -> int:
        """Hand a complete `* n FETCH (... {size}` + literal + `)` response at `start` to the
        pending FETCH in the parts aioimaplib would make of it; returns where it ended, or
        `start` when aioimaplib must read what is there. One match and two slices instead of
        aioimaplib's per-line recursion and exceptions: a third of a listing's cost."""
        command = self.pending_async_commands.get("FETCH")  # STORE's is a plain Command
        if not isinstance(command, _FetchCommand) or self.pending_sync_command is not None:
            return start
        if self.incomplete_line:
            return start
        if self.current_command is not None:  # within a response aioimaplib is reading
            return start
        match = _FETCH_LITERAL.match(data, start)
        if match is None:
            return start
        begin = match.end()
        end = begin + int(match[2])
        if end - begin > self._max_literal:
            return start  # aioimaplib announces it, and `_check_bounds` refuses it
        if data[end : end + len(_FETCH_END)] != _FETCH_END:  # incomplete, or more items follow
            return start
        # the line as `_untagged_response` passes it on (without "* "); literals are bytearray
        if not command.take_whole(match[1], bytearray(memoryview(data)[begin:end])):
            return start
        return end + len(_FETCH_END)

    def _literal_remaining(self) -> int:
        command = self.current_command
        if command is None or not command.wait_literal_data():
            return 0
        return int(command._expected_size) - len(command._resp_literal_data)

    def _feed(self, data: bytes) -> None:
        try:
            self._handle_responses(
                self.incomplete_line + data, self._handle_line, self.current_command
            )
            self.incomplete_line = b""
            self.current_command = None
        except aioimaplib.IncompleteRead as partial:
            self.current_command = partial.cmd
            self.incomplete_line = partial.data

    def send(self, line: str, scrub: str | None = None) -> None:
        # The base class logs the line (credentials included) before writing it.
        command = self.pending_sync_command  # set just before `execute` sends its line
        if isinstance(command, _CredentialCommand) and line == str(command):
            line = command.wire()
        self.transport.write(line.encode("utf-8") + b"\r\n")
        self.commands_sent += 1

    def _handle_line(self, line: bytes, current_cmd: Any) -> Any:
        if self.state == aioimaplib.CONNECTED:
            # The base class runs the greeting through a task that raises on BYE and sends
            # CAPABILITY itself; we want the greeting synchronously and our own deadlines.
            if line and not self.greeting.done():
                self.greeting.set_result(line)
                usable = line.upper().startswith(b"* OK")
                self.state = aioimaplib.NONAUTH if usable else aioimaplib.LOGOUT
            return None
        return super()._handle_line(line, current_cmd)

    def _untagged_response(self, line: bytes) -> Any:
        # The base class does `line.replace(b"* ", b"")`, which also corrupts quoted strings
        # (bodies, mailbox names) that contain "* "; only the leading marker is cut here.
        line = line[2:] if line.startswith(b"* ") else line
        if self.pending_sync_command is not None:
            self.pending_sync_command.append_to_resp(line)
            return self.pending_sync_command
        match = aioimaplib.message_data_re.match(line)
        if match:
            name, text = match.group(1), line
        else:
            name, _, text = line.partition(b" ")
        command = self.pending_async_commands.get(name.decode("ascii", "replace").upper())
        if command is not None:
            command.append_to_resp(text)
        return command

    def _continuation(self, line: bytes) -> None:
        command = self.pending_sync_command
        if command is None or command.name != "AUTHENTICATE":
            super()._continuation(line)
            return
        # RFC 3501 6.2.2: the first "+" asks for our initial response when SASL-IR was not
        # used; any further challenge is the server's error report (XOAUTH2 sends JSON),
        # answered with an empty line so that it finishes with a tagged NO.
        response, self.sasl_response = self.sasl_response, None
        self.transport.write((response or "").encode("ascii") + b"\r\n")

    # --- what Connection uses (it never touches aioimaplib itself)

    @property
    def greeted_ok(self) -> bool:
        """True after an `* OK` greeting (not BYE, not PREAUTH)."""
        return bool(self.state == aioimaplib.NONAUTH)

    def authenticated(self) -> None:
        self.state = aioimaplib.AUTH

    def selected(self) -> None:
        self.state = aioimaplib.SELECTED  # aioimaplib leaves EXAMINE (a "simple command") in AUTH

    def command(self, name: str, args: tuple[str, ...], *, uid: bool) -> Any:
        """An aioimaplib command object; ValueError if an argument holds NUL, CR or LF."""
        options: dict[str, Any] = {"prefix": "UID" if uid else None, "loop": self.loop}
        if name == "FETCH":
            return _FetchCommand(self.new_tag(), *args, **options)
        if name in _CREDENTIAL_COMMANDS:
            return _CredentialCommand(name, self.new_tag(), *args, **options)
        if name == "STORE":
            options["untagged_resp_name"] = "FETCH"  # as aioimaplib's own store() does
        elif name == "SEARCH" and args[:1] == ("RETURN",):
            options["untagged_resp_name"] = "ESEARCH"  # RFC 4731 3: answered by `* ESEARCH`
        return aioimaplib.Command(name, self.new_tag(), *args, **options)

    async def submit(self, command: Any) -> Reply:
        """Send `command` and wait for its tagged reply (no deadline: the caller owns it)."""
        response = await self.execute(command)
        lines = list(response.lines)
        text = lines.pop() if lines and isinstance(lines[-1], bytes) else b""
        return Reply(str(response.result), tuple(lines), bytes(text))


def _scrubbed(exc: Exception) -> str:
    """What went wrong, without the server's text or our command's arguments: aioimaplib's
    messages are a fixed phrase followed by both (`... (A1 LOGIN "u" "p") response: ...`)."""
    if isinstance(exc, aioimaplib.AioImapException):
        phrase = str(exc).split("(", 1)[0].split(":", 1)[0].strip()
        return f"out-of-protocol reply ({phrase or type(exc).__name__})"
    return f"unreadable reply ({type(exc).__name__})"
