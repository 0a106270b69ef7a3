"""Hostile input that tests/e2e/test_bad_input.py does not cover, in the same shape.

Each case is one or more lines sent on a fresh connection (before or after login) with the
exact replies it must get; then the same connection must still serve (CAPA, QUIT) and alice's
mailbox (messages, flags, folders) must be exactly as before. The bridge's upstream runs
through the fault proxy with nothing armed, which records every byte sent to Dovecot: every
line there must be one of the bridge's own tagged commands or a base64 SASL response, so no
user-supplied string (USER, PASS, AUTH PLAIN authcid and password, LOGIN, XOAUTH2 `user=`,
OAUTHBEARER `a=`) ever reached IMAP as syntax. Covered here: limits at and past the caps, NUL,
bare CR and LF, numbers, wrong states, SASL and base64, STLS misuse, and IMAP injection.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass

import pytest

from devkit.dovecot import Dovecot
from devkit.faultproxy import Direction, FaultProxy
from popbridge.config import ListenerConfig
from popbridge.frontend.tls import TlsSettings
from tests.conftest import StartBridge
from tests.e2e.test_bad_input import upstream_state
from tests.hardening.hostile_cases import (
    AUTHORIZATION_EXTRA,
    NOT_IN_STATE,
    TRANSACTION_EXTRA,
    b64,
)
from tests.hardening.pop3client import Pop3Client

pytestmark = pytest.mark.dovecot

OWN_COMMAND = re.compile(
    rb"[A-P]{3,4}[0-9]+ (CAPABILITY|AUTHENTICATE PLAIN [A-Za-z0-9+/]+=*"
    rb"|EXAMINE \"INBOX\"(?: \(CONDSTORE\))?|UID SEARCH NOT DELETED"
    rb"|UID SEARCH (?:RETURN \(ALL\) )?UID 1:[0-9]+"
    rb"|UID FETCH [0-9:,*]+ \([A-Z0-9. ()\[\]<>-]+\)|LOGOUT)"
)
BASE64_RESPONSE = re.compile(rb"[A-Za-z0-9+/]*=*")


@pytest.fixture(scope="module")
def seeded(dovecot: Dovecot) -> Dovecot:
    dovecot.reset_mailbox("alice")
    dovecot.seed_generated("alice", 3, 500)
    return dovecot


@dataclass
class Served:
    """A bridge behind the recording proxy, and alice's mailbox as it was before."""

    address: tuple[str, int]
    proxy: FaultProxy
    dovecot: Dovecot
    before: tuple[dict[int, set[str]], list[bytes]]

    def assert_upstream_untouched(self) -> None:
        assert upstream_state(self.dovecot) == self.before
        for line in self.proxy.sent(Direction.UP).split(b"\r\n")[:-1]:
            assert OWN_COMMAND.fullmatch(line) or BASE64_RESPONSE.fullmatch(line), line


@pytest.fixture
async def served(bridge: StartBridge, seeded: Dovecot, proxy: FaultProxy) -> Served:
    server = await bridge(port=proxy.port)
    return Served(server.addresses[0], proxy, seeded, upstream_state(seeded))


async def converse(served: Served, login: bool, sent: bytes, expected: list[bytes]) -> None:
    """Send `sent`, compare the replies, show the connection still serves, check upstream."""
    client = await Pop3Client.connect(served.address)
    if login:
        # the octets are told once every size is exact (measured when STAT or LIST asks)
        assert (await client.login()).startswith(b"+OK maildrop has 3 messages")
    client.writer.write(sent)
    assert [await client.line() for _ in expected] == expected
    assert await client.command(b"CAPA") == b"+OK capability list follows"
    await client.lines()
    assert await client.command(b"QUIT") == b"+OK bye"
    await client.close()
    served.assert_upstream_untouched()


@pytest.mark.parametrize(("sent", "expected"), AUTHORIZATION_EXTRA)
async def test_more_hostile_input_before_login(
    served: Served, sent: bytes, expected: list[bytes]
) -> None:
    await converse(served, False, sent, expected)


@pytest.mark.parametrize(("sent", "expected"), TRANSACTION_EXTRA)
async def test_more_hostile_input_after_login(
    served: Served, sent: bytes, expected: list[bytes]
) -> None:
    await converse(served, True, sent, expected)


PLAINTEXT_REFUSED = (
    b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections"
)


@pytest.fixture
async def stls(bridge: StartBridge, seeded: Dovecot, proxy: FaultProxy) -> Served:
    """A plain listener that offers STLS and refuses passwords before it."""
    pki = seeded.pki
    listener = ListenerConfig(
        host="127.0.0.1", port=0, tls=TlsSettings(pki.cert_file, pki.key_file)
    )
    server = await bridge(port=proxy.port, listeners=(listener,))
    return Served(server.addresses[0], proxy, seeded, upstream_state(seeded))


async def test_stls_misuse_and_plaintext_injection(stls: Served) -> None:
    client = await Pop3Client.connect(stls.address)
    assert await client.command(b"USER alice") == PLAINTEXT_REFUSED
    assert await client.command(b"AUTH PLAIN " + b64(b"\0alice\0secret")) == PLAINTEXT_REFUSED
    # RFC 2595 section 4 / CVE-2011-0411: what is pipelined behind STLS is never executed
    client.writer.write(b"STLS\r\nUSER alice\r\nPASS secret\r\n")
    assert await client.line() == b"+OK Begin TLS negotiation now"
    context = ssl.create_default_context(cafile=str(stls.dovecot.pki.ca_file))
    await client.writer.start_tls(context, server_hostname="localhost")
    assert await client.command(b"PASS secret") == b"-ERR PASS must follow a successful USER"
    assert await client.command(b"STLS") == b"-ERR command not permitted when TLS active"
    assert (await client.login()).startswith(b"+OK maildrop has 3 messages")
    assert await client.command(b"STLS") == NOT_IN_STATE
    assert await client.command(b"QUIT") == b"+OK bye"
    stls.assert_upstream_untouched()


async def test_failed_stls_handshake_never_falls_back_to_plaintext(stls: Served) -> None:
    client = await Pop3Client.connect(stls.address)
    assert await client.command(b"STLS") == b"+OK Begin TLS negotiation now"
    client.writer.write(b"USER alice\r\nPASS secret\r\nSTAT\r\n")  # not a TLS ClientHello
    assert await client.until_closed() == b""  # closed, not a word in plaintext
    assert stls.proxy.sent(Direction.UP) == b""  # and nothing went upstream
    stls.assert_upstream_untouched()
