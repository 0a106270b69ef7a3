"""Real clients over STLS and implicit TLS, trusting a test CA, through the bridge to a
real Dovecot; and a run that proves no password, token or body ever reaches the logs."""

from __future__ import annotations

import asyncio
import base64
import logging
import poplib
import ssl
from pathlib import Path

import pytest

from devkit import clients
from devkit.clients import Pop3Target, strip_client_additions
from devkit.dovecot import Dovecot
from devkit.tlsca import TestPki, make_test_pki
from popbridge.config import ListenerConfig
from popbridge.frontend.server import Pop3Server
from popbridge.frontend.tls import TlsSettings
from tests.conftest import StartBridge

pytestmark = [pytest.mark.dovecot, pytest.mark.clients]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("bridge-pki"))


@pytest.fixture
async def tls_bridge(bridge: StartBridge, pki: TestPki) -> Pop3Server:
    """Listener 0: plain + STLS (passwords only after STLS); listener 1: implicit TLS."""
    settings = TlsSettings(pki.cert_file, pki.key_file)
    return await bridge(
        listeners=(
            ListenerConfig(host="127.0.0.1", port=0, tls=settings),
            ListenerConfig(host="127.0.0.1", port=0, mode="implicit", tls=settings),
        )
    )


@pytest.fixture
def expected(mailbox: Dovecot) -> list[bytes]:
    return mailbox.seed_generated("alice", 6, 2500)


def target(server: Pop3Server, pki: TestPki, tls: str) -> Pop3Target:
    port = server.addresses[0 if tls == "starttls" else 1][1]
    # "localhost": fetchmail checks DNS names only, not IP addresses
    return Pop3Target("localhost", port, "alice", "secret", tls=tls, ca_file=pki.ca_file)


TLS_MODES = pytest.mark.parametrize("tls", ["starttls", "implicit"])


@TLS_MODES
async def test_poplib(
    tls_bridge: Pop3Server, pki: TestPki, expected: list[bytes], mailbox: Dovecot, tls: str
) -> None:
    got = await asyncio.to_thread(
        clients.poplib_fetch_all, target(tls_bridge, pki, tls), delete=True
    )
    assert got == expected
    assert mailbox.uids("alice") == {}


@TLS_MODES
async def test_curl(
    tls_bridge: Pop3Server, pki: TestPki, expected: list[bytes], tmp_path: Path, tls: str
) -> None:
    where = target(tls_bridge, pki, tls)
    listing = await asyncio.to_thread(clients.curl_list, where)
    assert len(listing.split()) == 2 * len(expected)
    assert (
        await asyncio.to_thread(clients.curl_retr_all, where, len(expected), tmp_path) == expected
    )


@TLS_MODES
async def test_fetchmail(
    tls_bridge: Pop3Server,
    pki: TestPki,
    expected: list[bytes],
    mailbox: Dovecot,
    tmp_path: Path,
    tls: str,
) -> None:
    delivered = await asyncio.to_thread(
        clients.run_fetchmail, target(tls_bridge, pki, tls), tmp_path, keep=False
    )
    assert [strip_client_additions("fetchmail", m) for m in delivered] == expected
    assert mailbox.uids("alice") == {}


@TLS_MODES
async def test_mpop(
    tls_bridge: Pop3Server,
    pki: TestPki,
    expected: list[bytes],
    mailbox: Dovecot,
    tmp_path: Path,
    tls: str,
) -> None:
    delivered = await asyncio.to_thread(
        clients.run_mpop, target(tls_bridge, pki, tls), tmp_path, keep=True
    )
    assert [strip_client_additions("mpop", m) for m in delivered] == expected
    assert len(mailbox.uids("alice")) == len(expected)


async def test_getmail_over_implicit_tls(
    tls_bridge: Pop3Server, pki: TestPki, expected: list[bytes], tmp_path: Path
) -> None:
    delivered = await asyncio.to_thread(
        clients.run_getmail, target(tls_bridge, pki, "implicit"), tmp_path, delete=False
    )
    assert [strip_client_additions("getmail", m) for m in delivered] == expected


async def test_plain_listener_refuses_passwords_before_stls(
    tls_bridge: Pop3Server, expected: list[bytes]
) -> None:
    def attempt() -> None:
        client = poplib.POP3("127.0.0.1", tls_bridge.addresses[0][1])
        client.user("alice")

    with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Plaintext authentication disallowed"):
        await asyncio.to_thread(attempt)


async def test_no_secret_or_body_reaches_the_logs(
    tls_bridge: Pop3Server, pki: TestPki, mailbox: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    marker = b"BODY-MARKER-7f3a9c"
    mailbox.seed("alice", [b"Subject: private\n\n" + marker + b"\n"])
    token = "ya29.TOKEN-5be1d2c8" + "q" * 40
    secrets = ["secret", 'wr0ng-Passw0rd"\\', token]
    caplog.set_level(logging.DEBUG)
    port = tls_bridge.addresses[1][1]
    context = ssl.create_default_context(cafile=str(pki.ca_file))

    def sessions() -> None:
        client = poplib.POP3_SSL("localhost", port, context=context)
        client.user("alice")
        with pytest.raises(poplib.error_proto):
            client.pass_(secrets[1])
        client.user("alice")
        client.pass_("secret")
        client.retr(1)
        client.quit()
        client = poplib.POP3_SSL("localhost", port, context=context)
        plain = base64.b64encode(b"\0alice\0" + secrets[1].encode()).decode()
        with pytest.raises(poplib.error_proto):
            client._shortcmd(f"AUTH PLAIN {plain}")  # type: ignore[attr-defined]
        xoauth = base64.b64encode(f"user=alice\x01auth=Bearer {token}\x01\x01".encode()).decode()
        # this Dovecot has no XOAUTH2: the token still travels to it, and is refused
        with pytest.raises(poplib.error_proto, match=r"SYS/PERM"):
            client._shortcmd(f"AUTH XOAUTH2 {xoauth}")  # type: ignore[attr-defined]
        client.quit()

    await asyncio.to_thread(sessions)
    text = caplog.text
    assert "logged in" in text  # the capture really saw the session
    forms = [*secrets, base64.b64encode(token.encode()).decode()[:40], 'wr0ng-Passw0rd\\"\\\\']
    for secret in forms[1:]:
        assert secret not in text
    assert "secret'" not in text and " secret" not in text
    assert marker.decode() not in text
