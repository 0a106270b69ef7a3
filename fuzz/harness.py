"""What one fuzz input does, and the properties it must not break.

`check(data)` treats `data` as a hostile client: its first byte picks a preamble (nothing, a
USER/PASS login, an AUTH PLAIN login, STLS) and the listener policy, its second byte the size
of the pieces the rest arrives in. The stream goes through `parse_command` line by line,
through strict base64 and every SASL mechanism, and through a real `Pop3Engine` and `Session`
over the in-memory backend, driven on one event loop of its own with a deadline per command
(the session prepares the next RETR's answer in a task of its own). A violated property raises
`AssertionError`; any other exception escaping is a crash. The properties: only the documented
`SessionClosing` and `SaslFailed` are raised; no reply line exceeds 512 octets (RFC 2449
section 4); every `-ERR` text is one of the bridge's fixed texts, so client input is never
echoed (conformance P-1.3, S-6); the engine's state agrees with the session's; the engine's
buffer stays bounded; and the upstream changes only at a QUIT from TRANSACTION (RFC 1939
section 6).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Coroutine, Iterator
from typing import Any

from devkit.dialogue import LOG, Capture
from devkit.memory_backend import MemoryBackend
from popbridge.errors import BridgeError
from popbridge.pop3 import commands as c
from popbridge.pop3 import sasl
from popbridge.pop3.engine import MAX_AUTH_LINE, Event, NeedData, Pop3Engine, State
from popbridge.session.session import (
    PLAINTEXT_REFUSED,
    Services,
    Session,
    SessionClosing,
    SessionPolicy,
)
from popbridge.session.throttle import Throttle, ThrottlePolicy

MAX_LINE = 512  # octets including CRLF, RFC 2449 section 4
ERROR_CLASSES: list[type[BridgeError]] = [BridgeError, *BridgeError.__subclasses__()]
# Every text a -ERR may carry: fixed strings, so a reply can never contain client input.
ALLOWED_ERRORS = frozenset(
    {
        "line too long", "command not valid in this state", "PASS must follow a successful USER",
        "too many errors, closing connection", "control characters are not allowed",
        "unknown command", "missing password", "missing user name", "password too long",
        "user name too long", "password is not valid UTF-8", "user name is not valid UTF-8",
        "non-ASCII characters are not allowed", "arguments must be separated by a single space",
        "this command takes no arguments", "one message number needed", "invalid message number",
        "TOP needs a message number and a line count", "invalid line count",
        "one user name needed", "AUTH takes a mechanism and an optional initial response",
        "command not supported", "TLS not available on this port",
        "command not permitted when TLS active", PLAINTEXT_REFUSED,
        "unsupported authentication mechanism", "authentication cancelled",
        "some deleted messages not removed", "no such message", "message already deleted",
        "too many failed logins from your address, try later",
        "too many failed logins, account temporarily locked",
        "invalid base64", "malformed PLAIN message", "authorization identity not permitted",
        "malformed bearer token", "malformed XOAUTH2 message", "malformed OAUTHBEARER message",
        "malformed key=value pair", "empty user name", "empty password", "empty token",
        "token too long", "user name is not UTF-8", "password is not UTF-8",
        "token is not UTF-8",
    }
) | {error.wire_text for error in ERROR_CLASSES}  # fmt: skip
_ERR = re.compile(rb"-ERR(?: \[(AUTH|SYS/TEMP|SYS/PERM|IN-USE|LOGIN-DELAY)\])?(?: (.*))?")
PREAMBLES = (
    b"",
    b"USER alice\r\nPASS secret\r\n",
    b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n",
    b"STLS\r\n",
)
# Bugs proven by failing tests in tests/hardening/test_bugs.py, tolerated here so a run can
# go on past them. Delete an entry when its bug is fixed.
KNOWN_BUGS: frozenset[str] = frozenset()  # fixed: see tests/hardening/test_bugs.py


class KnownBug(Exception):
    """An input that hit a bug already proven by a failing test."""


def require(condition: object, detail: object) -> None:
    """The harness's assert: a violated property, with what violated it."""
    if not condition:
        raise AssertionError(detail)


# The in-memory backend answers at once: a command still running after this is stuck.
HANG_LIMIT = 5.0
_LOOP = asyncio.new_event_loop()


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Drive `coroutine` to the end; AssertionError if it hangs."""
    try:
        return _LOOP.run_until_complete(asyncio.wait_for(coroutine, HANG_LIMIT))
    except TimeoutError:
        raise AssertionError("the session hung on the in-memory backend") from None


def check_reply(reply: bytes) -> None:
    """Every line at most 512 octets; a -ERR carries a known code and a fixed text."""
    if not reply:
        return
    require(reply.endswith(b"\r\n"), reply[-80:])
    for line in reply.split(b"\r\n")[:-1]:
        require(len(line) + 2 <= MAX_LINE, f"reply line of {len(line) + 2} octets")
    status = reply.split(b"\r\n", 1)[0]
    require(status.startswith((b"+OK", b"-ERR", b"+ ")), status[:80])
    if status.startswith(b"-ERR"):
        found = _ERR.fullmatch(status)
        text = found.group(2) if found else None
        require(found and (text or b"").decode("ascii") in ALLOWED_ERRORS, status)


def lines(stream: bytes) -> Iterator[bytes]:
    for line in stream.split(b"\n"):
        yield line.removesuffix(b"\r")


def check_parser(stream: bytes) -> None:
    """`parse_command` returns a command or a fixed reason for every line."""
    for line in lines(stream[:65536]):
        parsed = c.parse_command(line)
        if isinstance(parsed, c.Invalid):
            require(parsed.reason in ALLOWED_ERRORS, parsed.reason)


def check_sasl(data: bytes) -> None:
    """Strict base64 and every mechanism refuse with a fixed text, or produce a step."""
    text = data[:4096].decode("latin-1")
    for initial in (False, True):
        try:
            sasl.decode(text, initial=initial)
        except sasl.SaslFailed as failed:
            require(str(failed) in ALLOWED_ERRORS, str(failed))
    for name in sasl.PASSWORD_MECHANISMS + sasl.TOKEN_MECHANISMS:
        mechanism = sasl.mechanism(name)
        require(mechanism is not None, name)
        assert mechanism is not None
        try:
            step = mechanism.start(data[:4096])
            if isinstance(step, sasl.Challenge):
                mechanism.step(data[4096:8192] or data[:64])
        except sasl.SaslFailed as failed:
            require(str(failed) in ALLOWED_ERRORS, str(failed))


def new_session(policy_bits: int) -> tuple[Session, Capture, MemoryBackend]:
    backend = MemoryBackend()
    store = backend.user("alice", "secret", b"Subject: a\r\n\r\n.dot\r\n", b"X: y\n\nbody")
    store.token, store.chunk_size = "tok", 5
    policy = SessionPolicy(plaintext_auth=bool(policy_bits & 1), starttls=bool(policy_bits & 2))
    services = Services(backend=backend, throttle=Throttle(ThrottlePolicy(base_delay=0)))
    out = Capture()
    session = Session(Pop3Engine(), out, services, policy, secure=False, log=LOG, address="fuzz")
    return session, out, backend


def check_state(session: Session, event: Event | None) -> None:
    engine = session.engine
    require(engine.state is not State.UPDATE, "UPDATE outlived its QUIT")
    logged_in = session.transaction is not None
    listing = isinstance(event, c.Auth) and event.mechanism is None
    bug = listing and engine.state is State.TRANSACTION and not logged_in
    if bug and "auth-listing-enters-transaction" in KNOWN_BUGS:  # tests/hardening/test_bugs.py
        raise KnownBug("auth-listing-enters-transaction")
    require((engine.state is State.TRANSACTION) == logged_in, (engine.state, event))
    if engine.in_sasl or engine.awaiting_pass:
        require(engine.state is State.AUTHORIZATION, (engine.state, event))


def feed(session: Session, out: Capture, backend: MemoryBackend, piece: bytes) -> bool:
    """Process one received piece; False once the session closed the connection."""
    engine = session.engine
    engine.receive(piece)
    while not isinstance(event := engine.next_event(), NeedData):
        before, changes = engine.state, len(backend.stores["alice"].mutations)
        try:
            run(session.handle(event))
        except SessionClosing:
            check_reply(out.take())
            return False
        check_reply(out.take())
        if len(backend.stores["alice"].mutations) != changes:
            require(isinstance(event, c.Quit) and before is State.TRANSACTION, event)
        check_state(session, event)
    if engine.tls_pending:  # what the server does after +OK to STLS: drop plaintext, handshake
        engine.discard_plaintext()
        session.tls_started()
    elif engine.state is not State.CLOSED:
        require(engine.buffered < MAX_AUTH_LINE, f"{engine.buffered} bytes buffered")
    return True


def check(data: bytes) -> None:
    """One fuzz input (see the module docstring)."""
    head = data[0] if data else 0
    stream = PREAMBLES[head % len(PREAMBLES)] + data[2:]
    # pieces of 1-256 bytes, but at most ~256 of them: long inputs cost time, not coverage
    size = max(1 + (data[1] if len(data) > 1 else 255), len(stream) // 256)
    check_parser(stream)
    check_sasl(data[2:])
    session, out, backend = new_session(head >> 2)
    try:
        for start in range(0, len(stream), size):
            if not feed(session, out, backend, stream[start : start + size]):
                break
    finally:
        run(session.abort())
