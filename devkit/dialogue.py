"""Transcript tests: drive an engine and a session with "C:" lines, compare "S:" lines.

A dialogue is a list of strings: "C: ..." is sent by the client (CRLF added), "S: ..."
is one line the server must answer, and "S~ regex" matches one line by regular
expression. Multi-line answers are written line by line, "." included. No sockets: the
session writes into a buffer, which is exactly what the server would send.
"""

from __future__ import annotations

import logging
import re

from devkit.memory_backend import MemoryBackend
from popbridge.pop3.engine import NeedData, Pop3Engine
from popbridge.session.session import Services, Session, SessionClosing, SessionPolicy
from popbridge.session.throttle import Throttle, ThrottlePolicy

NO_DELAY = ThrottlePolicy(base_delay=0)


def quick_services(backend: MemoryBackend) -> Services:
    """Services whose failed logins are answered at once."""
    return Services(backend=backend, throttle=Throttle(NO_DELAY))


LOG = logging.LoggerAdapter(logging.getLogger("devkit.dialogue"), {})


class Capture:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


def make_session(
    backend: MemoryBackend,
    policy: SessionPolicy | None = None,
    *,
    secure: bool = False,
    services: Services | None = None,
) -> tuple[Session, Capture]:
    out = Capture()
    policy = policy or SessionPolicy(plaintext_auth=True)
    services = services or quick_services(backend)
    session = Session(
        Pop3Engine(), out, services, policy, secure=secure, log=LOG, address="192.0.2.1"
    )
    return session, out


async def exchange(session: Session, out: Capture, data: bytes) -> tuple[bytes, bool]:
    """Feed `data`, answer every complete command; returns (server bytes, closed)."""
    session.engine.receive(data)
    try:
        while not isinstance(event := session.engine.next_event(), NeedData):
            await session.handle(event)
    except SessionClosing:
        return out.take(), True
    return out.take(), False


async def assert_dialogue(session: Session, out: Capture, *script: str) -> None:
    """Send each "C:" line and compare the server's answer with the lines after it."""
    steps = list(script)
    index = 0
    while index < len(steps):
        assert steps[index].startswith("C:"), f"script must start with a C: line: {steps[index]}"
        sent = steps[index][3:].encode("utf-8") + b"\r\n"
        index += 1
        expected = []
        while index < len(steps) and not steps[index].startswith("C:"):
            expected.append(steps[index])
            index += 1
        reply, _ = await exchange(session, out, sent)
        _compare(reply, expected)


def _compare(received: bytes, expected: list[str]) -> None:
    lines = received.split(b"\r\n")
    assert lines[-1] == b"", f"reply not CRLF-terminated: {received!r}"
    lines = lines[:-1]
    assert len(lines) == len(expected), f"expected {expected}, got {lines}"
    for got, want in zip(lines, expected, strict=True):
        text = got.decode("utf-8", "replace")
        if want.startswith("S~ "):
            assert re.fullmatch(want[3:], text), f"{text!r} does not match {want[3:]!r}"
        else:
            assert text == want[3:], f"expected {want[3:]!r}, got {text!r}"
