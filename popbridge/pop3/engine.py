"""The sans-I/O POP3 server engine: bytes in, commands out, replies in, bytes out.

The engine owns the protocol state (RFC 1939 section 3: AUTHORIZATION, TRANSACTION,
UPDATE) and the one table of which command is valid in which state. It buffers input
with a hard cap per line, hands out one command at a time in order (pipelining, RFC 2449
section 6.6), answers malformed or out-of-state lines itself with a fixed `-ERR`, and
learns outcomes from the replies it is given: `+OK` to PASS enters TRANSACTION, `+OK` to
STLS discards buffered plaintext, a `+ ` challenge makes the next line a SASL response.
It imports no asyncio, ssl, socket or backend module, so every rule here is testable with
plain byte strings.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Final

from popbridge.pop3 import commands as c
from popbridge.pop3.replies import Continue, Err, Ok, Reply, encode


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


_AUTH: Final = frozenset({State.AUTHORIZATION})
_TRANS: Final = frozenset({State.TRANSACTION})
_BOTH: Final = _AUTH | _TRANS

# RFC 1939 sections 4-7, RFC 2449 section 5, RFC 2595 section 4, RFC 5034 section 4.
ALLOWED_STATES: Final[dict[type[c.Command], frozenset[State]]] = {
    c.User: _AUTH,
    c.Pass: _AUTH,
    c.Apop: _AUTH,
    c.Auth: _AUTH,
    c.Stls: _AUTH,
    c.Capa: _BOTH,
    c.Quit: _BOTH,
    c.Stat: _TRANS,
    c.List: _TRANS,
    c.Uidl: _TRANS,
    c.Retr: _TRANS,
    c.Top: _TRANS,
    c.Dele: _TRANS,
    c.Noop: _TRANS,
    c.Rset: _TRANS,
}

MAX_COMMAND_LINE: Final = 1024  # RFC 2449 section 4 requires at least 255
MAX_AUTH_LINE: Final = 16384  # RFC 5034 section 4: SASL lines may be long (OAuth tokens)
MAX_STRIKES: Final = 10  # consecutive rejected lines before the connection is closed
_LONG_LINE_PREFIXES: Final = (b"AUTH ", b"PASS ")


class NeedData:
    """`next_event` has nothing complete to return; feed more bytes."""


NEED_DATA: Final = NeedData()


@dataclass(frozen=True, slots=True)
class Rejected:
    """The engine refused a line; send `reply` and go on (or close when `close` is set)."""

    reply: Err
    close: bool = False


Event = c.Command | Rejected | NeedData


class ProtocolError(Exception):
    """The engine was driven out of order by its caller: a bug, not client input."""


class Pop3Engine:
    """One POP3 server connection's protocol state, with no I/O."""

    def __init__(self, *, max_line: int = MAX_COMMAND_LINE, max_auth_line: int = MAX_AUTH_LINE):
        self.state = State.AUTHORIZATION
        self._max_line = max_line
        self._max_auth_line = max_auth_line
        self._buffer = bytearray()
        self._discarding = False
        self._pending: c.Command | None = None
        self._user: str | None = None  # the name of a USER just accepted
        self._in_sasl = False
        self._tls_pending = False
        self._strikes = 0

    @staticmethod
    def greeting(text: str = "popbridge ready") -> bytes:
        """RFC 1939 section 4; no APOP timestamp: the bridge cannot check APOP digests."""
        return encode(Ok(text))

    @property
    def awaiting_pass(self) -> bool:
        """True right after a successful USER: only PASS may follow (RFC 1939 section 7)."""
        return self._user is not None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed: the caller pauses reading past a limit."""
        return len(self._buffer)

    @property
    def in_sasl(self) -> bool:
        """True while the next line is a SASL response rather than a command."""
        return self._in_sasl

    @property
    def tls_pending(self) -> bool:
        """True after `+OK` to STLS until `tls_established` is called."""
        return self._tls_pending

    def receive(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the client (copied: the caller may reuse its buffer)."""
        self._buffer += data

    def next_event(self) -> Event:
        """The next command, a rejection to send, or NEED_DATA."""
        if self._pending is not None:
            raise ProtocolError("reply to the previous command first")
        if self._tls_pending or self.state is State.CLOSED:
            return NEED_DATA
        line = self._next_line()
        if isinstance(line, NeedData | Rejected):
            return self._strike(line) if isinstance(line, Rejected) else line
        if self._in_sasl:
            self._pending = c.SaslResponse(line.decode("ascii", "replace"))
            return self._pending
        return self._dispatch(c.parse_command(line))

    def send(self, reply: Reply) -> bytes:
        """Answer the pending command (or a rejection); returns the bytes to write."""
        command, self._pending = self._pending, None
        if command is not None:
            self._apply(command, reply)
        return encode(reply)

    def discard_plaintext(self) -> None:
        """Drop every byte received so far: call it right before the TLS handshake starts.

        RFC 2595 section 4: the client must wait for the handshake, so anything it
        pipelined behind STLS is plaintext injection (CVE-2011-0411 class). The caller
        must switch the transport to TLS without yielding to the event loop in between.
        """
        self._buffer.clear()
        self._discarding = False

    def tls_established(self) -> None:
        """TLS is up after STLS: forget what the client said before it (RFC 2595 §4)."""
        self._tls_pending = False
        self._user = None

    def connection_closed(self) -> None:
        """The transport is gone; nothing more will be processed."""
        self.state = State.CLOSED

    def _next_line(self) -> bytes | NeedData | Rejected:
        if self._discarding:
            end = self._buffer.find(b"\n")
            if end < 0:
                self._buffer.clear()
                return NEED_DATA
            del self._buffer[: end + 1]
            self._discarding = False
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) >= self._line_cap():
                # conformance P-1.5: drop the rest of the line and answer it once
                self._buffer.clear()
                self._discarding = True
                return Rejected(Err("line too long"))
            return NEED_DATA
        if end + 1 > self._line_cap():
            del self._buffer[: end + 1]
            return Rejected(Err("line too long"))
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        # liberal line ends (conformance P-1.10 b): LF ends a line, one CR before it goes
        return line[:-1] if line.endswith(b"\r") else line

    def _line_cap(self) -> int:
        head = bytes(self._buffer[:5]).upper()
        long_line = self._in_sasl or head.startswith(_LONG_LINE_PREFIXES)
        return self._max_auth_line if long_line else self._max_line

    def _dispatch(self, parsed: c.Command | c.Invalid) -> Event:
        if isinstance(parsed, c.Invalid):
            return self._strike(Rejected(Err(parsed.reason)))
        if self.state not in ALLOWED_STATES[type(parsed)]:
            return self._strike(Rejected(Err("command not valid in this state")))
        if isinstance(parsed, c.Pass):
            if self._user is None:
                return self._strike(Rejected(Err("PASS must follow a successful USER")))
            parsed = dataclasses.replace(parsed, user=self._user)
        self._strikes = 0
        if isinstance(parsed, c.Quit) and self.state is State.TRANSACTION:
            self.state = State.UPDATE  # RFC 1939 section 6
        self._pending = parsed
        return parsed

    def _strike(self, rejected: Rejected) -> Rejected:
        self._user = None  # PASS must come *immediately* after USER (RFC 1939 §7)
        self._in_sasl = False  # a refused SASL line ends the exchange (RFC 5034 section 4)
        self._strikes += 1
        if self._strikes >= MAX_STRIKES:
            self.state = State.CLOSED
            return Rejected(Err("too many errors, closing connection"), close=True)
        return rejected

    def _apply(self, command: c.Command, reply: Reply) -> None:
        """Update the state from the reply given to `command`: the one transition table."""
        ok = isinstance(reply, Ok)
        self._user = command.name if ok and isinstance(command, c.User) else None
        if isinstance(reply, Continue):
            if not isinstance(command, c.Auth | c.SaslResponse):
                raise ProtocolError("a challenge answers only AUTH")
            self._in_sasl = True
            return
        self._in_sasl = False
        if isinstance(command, c.Quit):
            self.state = State.CLOSED
        elif ok and _logs_in(command):
            self.state = State.TRANSACTION
        elif ok and isinstance(command, c.Stls):
            self._tls_pending = True


def _logs_in(command: c.Command) -> bool:
    """Whether `+OK` to `command` means a login; `AUTH` alone only lists the mechanisms."""
    if isinstance(command, c.Auth):
        return command.mechanism is not None
    return isinstance(command, c.Pass | c.SaslResponse)
