"""Hostile and malformed input, each with its exact reply, against a bridge on a real
Dovecot. After every line the same connection must still serve, and the upstream
mailbox (messages, flags, folders) must be exactly as before."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import pytest

from devkit.dovecot import Dovecot
from popbridge.frontend.server import Pop3Server
from tests.conftest import StartBridge

pytestmark = pytest.mark.dovecot

NOT_IN_STATE = b"-ERR command not valid in this state"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


AUTH_FAILED = b"-ERR [AUTH] authentication failed"
CONTROL = b"-ERR control characters are not allowed"
NON_ASCII = b"-ERR non-ASCII characters are not allowed"
BAD_NUMBER = b"-ERR invalid message number"

# (sent before login?, the line(s) sent, the exact reply lines)
AUTHORIZATION_CASES = [
    (b"\r\n", [b"-ERR unknown command"]),
    (b"XYZZ\r\n", [b"-ERR unknown command"]),
    (b"STATS\r\n", [b"-ERR unknown command"]),
    (b"[X\r\n", [b"-ERR unknown command"]),
    (b"STAT\r\n", [NOT_IN_STATE]),
    (b"LIST\r\n", [NOT_IN_STATE]),
    (b"RETR 1\r\n", [NOT_IN_STATE]),
    (b"DELE 1\r\n", [NOT_IN_STATE]),
    (b"UIDL\r\n", [NOT_IN_STATE]),
    (b"PASS secret\r\n", [b"-ERR PASS must follow a successful USER"]),
    (b"USER a\x00lice\r\n", [CONTROL]),
    (b"USER alice\rx\r\n", [CONTROL]),
    (b"US\tER alice\r\n", [CONTROL]),
    (b"USER \xff\xfe\r\n", [b"-ERR user name is not valid UTF-8"]),
    (b"USER " + b"x" * 256 + b"\r\n", [b"-ERR user name too long"]),
    (b"USER alice bob\r\n", [b"-ERR one user name needed"]),
    (b"USER\r\n", [b"-ERR one user name needed"]),
    (b"NOOP " + b"A" * 5000 + b"\r\n", [b"-ERR line too long"]),
    (b"APOP alice c4c9334bac560ecc979e58001b3e22fb\r\n", [b"-ERR command not supported"]),
    (b"AUTH FOOBAR\r\n", [b"-ERR unsupported authentication mechanism"]),
    (
        b"USER alice\r\nNOOP\r\nPASS secret\r\n",
        [b"+OK send PASS", NOT_IN_STATE, b"-ERR PASS must follow a successful USER"],
    ),
    # IMAP injection through USER/PASS reaches Dovecot as data only: every login fails
    (b'USER "alice"\r\nPASS secret\r\n', [b"+OK send PASS", AUTH_FAILED]),
    (b'USER alice"\r\nPASS "secret\r\n', [b"+OK send PASS", AUTH_FAILED]),
    (b'USER alice\r\nPASS secret" {5}\r\n', [b"+OK send PASS", AUTH_FAILED]),
    (b"USER alice\\\r\nPASS secret\r\n", [b"+OK send PASS", AUTH_FAILED]),
    (
        b"USER * DELETE Archive\r\nPASS x\r\n",
        [b"-ERR one user name needed", b"-ERR PASS must follow a successful USER"],
    ),
    (
        b"USER alice\r\na1 DELETE Archive\r\nPASS secret\r\n",
        [b"+OK send PASS", b"-ERR unknown command", b"-ERR PASS must follow a successful USER"],
    ),
    (
        b"USER alice\r\nPASS wrong\r\na2 CREATE Evil\r\n",
        [b"+OK send PASS", AUTH_FAILED, b"-ERR unknown command"],
    ),
    (b"USER alice)(\r\nPASS x) LOGOUT\r\n", [b"+OK send PASS", AUTH_FAILED]),
    (b"USER j\xc3\xb6rg\r\nPASS p\xc3\xa4ss\r\n", [b"+OK send PASS", AUTH_FAILED]),
    # the same through SASL: decoded credentials are data, never IMAP syntax
    (b"AUTH PLAIN " + b64(b"\0alice\0secret\r\na1 DELETE Archive") + b"\r\n", [AUTH_FAILED]),
    (b"AUTH PLAIN " + b64(b'\0alice" "x\0secret') + b"\r\n", [AUTH_FAILED]),
    (b"AUTH PLAIN " + b64(b"\0alice\0wrong") + b"\r\n", [AUTH_FAILED]),
    (b"AUTH PLAIN " + b64(b"\0al\x00ice\0secret") + b"\r\n", [b"-ERR malformed PLAIN message"]),
    (
        b"AUTH PLAIN " + b64(b"bob\0alice\0secret") + b"\r\n",
        [b"-ERR authorization identity not permitted"],
    ),
    (b"AUTH PLAIN AGFsaWNl!!AHB3\r\n", [b"-ERR invalid base64"]),
    (b"AUTH PLAIN\r\n*\r\n", [b"+ ", b"-ERR authentication cancelled"]),
    (b"AUTH PLAIN\r\n" + b"A" * 20000 + b"\r\n", [b"+ ", b"-ERR line too long"]),
    (b"AUTH LOGIN " + b64(b"u" * 2000) + b"\r\n", [b"-ERR user name too long"]),
    (
        b"AUTH XOAUTH2 " + b64(b"user=alice\x01auth=Bearer t\r\na1 LOGOUT\x01\x01") + b"\r\n\r\n",
        [b"+ " + b64(b'{"status": "401", "schemes": "bearer", "scope": "mail"}'), AUTH_FAILED],
    ),
    (
        b"AUTH XOAUTH2 " + b64(b"auth=Bearer t\x01\x01") + b"\r\n",
        [b"-ERR malformed XOAUTH2 message"],
    ),
    (b"STLS\r\n", [b"-ERR TLS not available on this port"]),
]
TRANSACTION_CASES = [
    (b"RETR 1_0\r\n", [BAD_NUMBER]),
    (b"RETR +1\r\n", [BAD_NUMBER]),
    ("RETR \u0661\r\n".encode(), [NON_ASCII]),
    ("RETR \u00b2\r\n".encode(), [NON_ASCII]),
    (b"RETR 0x1\r\n", [BAD_NUMBER]),
    (b"RETR -1\r\n", [BAD_NUMBER]),
    (b"RETR 12345678901\r\n", [b"-ERR no such message"]),
    (b"RETR 0\r\n", [b"-ERR no such message"]),
    (b"RETR 99\r\n", [b"-ERR no such message"]),
    (b"RETR \x001\r\n", [CONTROL]),
    (b"RETR 1 2\r\n", [b"-ERR one message number needed"]),
    (b"TOP 1\r\n", [b"-ERR TOP needs a message number and a line count"]),
    (b"TOP 1 -1\r\n", [b"-ERR invalid line count"]),
    (b"TOP 1 x\r\n", [b"-ERR invalid line count"]),
    (b"TOP x 1\r\n", [BAD_NUMBER]),
    (b"LIST  1\r\n", [b"-ERR arguments must be separated by a single space"]),
    (b"STAT x\r\n", [b"-ERR this command takes no arguments"]),
    (b"NO\rOP\r\n", [CONTROL]),
    (b"USER bob\r\n", [NOT_IN_STATE]),
    (b"PASS hunter2\r\n", [NOT_IN_STATE]),
    (b"AUTH PLAIN\r\n", [NOT_IN_STATE]),
    (b"STLS\r\n", [NOT_IN_STATE]),
    (
        b"DELE 1\r\nDELE 1\r\nRSET\r\n",
        [b"+OK message 1 deleted", b"-ERR message already deleted", b"+OK deletion marks removed"],
    ),
    (b"NOOP\n", [b"+OK"]),
    (b"UIDL 1 1\r\n", [b"-ERR one message number needed"]),
]


@pytest.fixture(scope="module")
def seeded(dovecot: Dovecot) -> Dovecot:
    dovecot.reset_mailbox("alice")
    dovecot.seed_generated("alice", 3, 500)
    return dovecot


def upstream_state(dovecot: Dovecot) -> tuple[dict[int, set[str]], list[bytes]]:
    client = dovecot.imap("alice")
    folders = sorted(f for f in client.list()[1] if isinstance(f, bytes))
    client.logout()
    return dovecot.uids("alice"), folders


@pytest.fixture
async def server(bridge: StartBridge, seeded: Dovecot) -> AsyncIterator[Pop3Server]:
    before = upstream_state(seeded)
    yield await bridge()
    assert upstream_state(seeded) == before


async def converse(server: Pop3Server, login: bool, sent: bytes, expected: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection(*server.addresses[0])
    assert (await reader.readline()).startswith(b"+OK")
    if login:
        writer.write(b"USER alice\r\nPASS secret\r\n")
        assert (await reader.readline()).startswith(b"+OK")
        assert (await reader.readline()).startswith(b"+OK maildrop")
    writer.write(sent)
    replies = [(await asyncio.wait_for(reader.readline(), 10)).rstrip(b"\r\n") for _ in expected]
    assert replies == expected
    writer.write(b"CAPA\r\n")  # the connection still serves
    assert (await reader.readuntil(b"\r\n.\r\n")).startswith(b"+OK")
    writer.write(b"QUIT\r\n")
    assert (await reader.readline()).startswith(b"+OK")
    writer.close()


@pytest.mark.parametrize(("sent", "expected"), AUTHORIZATION_CASES)
async def test_hostile_input_before_login(
    server: Pop3Server, sent: bytes, expected: list[bytes]
) -> None:
    await converse(server, False, sent, expected)


@pytest.mark.parametrize(("sent", "expected"), TRANSACTION_CASES)
async def test_hostile_input_after_login(
    server: Pop3Server, sent: bytes, expected: list[bytes]
) -> None:
    await converse(server, True, sent, expected)


async def test_repeated_garbage_closes_only_that_connection(server: Pop3Server) -> None:
    reader, writer = await asyncio.open_connection(*server.addresses[0])
    await reader.readline()
    writer.write(b"BOGUS\r\n" * 20)
    data = await asyncio.wait_for(reader.read(), 10)
    assert data.endswith(b"-ERR too many errors, closing connection\r\n")
    assert data.count(b"\r\n") == 10
    await converse(server, True, b"NOOP\r\n", [b"+OK"])  # others are still served


async def test_megabyte_line_is_refused_with_bounded_memory(server: Pop3Server) -> None:
    reader, writer = await asyncio.open_connection(*server.addresses[0])
    await reader.readline()
    writer.write(b"NOOP" + b"A" * 1_000_000 + b"\r\nCAPA\r\n")
    assert await asyncio.wait_for(reader.readline(), 10) == b"-ERR line too long\r\n"
    assert (await reader.readline()).startswith(b"+OK")
    writer.close()
