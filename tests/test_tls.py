"""Downstream TLS over real sockets: implicit TLS, STLS rules, injection, handshakes,
legacy profiles with a real `openssl s_client`, and certificate reload."""

from __future__ import annotations

import asyncio
import os
import poplib
import shutil
import socket
import ssl
import subprocess
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from devkit.memory_backend import MemoryBackend
from devkit.servers import Servers
from devkit.tlsca import TestPki, make_test_pki
from popbridge.cli.commands import main
from popbridge.config import Config, ListenerConfig, ServerConfig
from popbridge.frontend.server import Pop3Server
from popbridge.frontend.tls import TlsSettings, build_context
from popbridge.session.throttle import ThrottlePolicy

MESSAGE = b"Subject: tls\r\n\r\nover TLS\r\n"


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return make_test_pki(tmp_path / "pki")


@pytest.fixture
async def start(pki: TestPki) -> AsyncIterator[Callable[..., object]]:
    servers = Servers()

    async def start(*listeners: ListenerConfig, **server: object) -> Pop3Server:
        backend = MemoryBackend()
        backend.user("alice", "secret", MESSAGE)
        options: dict[str, Any] = {"throttle": ThrottlePolicy(base_delay=0), **server}
        config = Config(
            source="t", backend_type="memory", listeners=listeners, server=ServerConfig(**options)
        )
        return await servers.start(config, backend)

    yield start
    await servers.stop()


def tls_listener(pki: TestPki, mode: str = "plain", **options: object) -> ListenerConfig:
    settings = TlsSettings(pki.cert_file, pki.key_file, **options)  # type: ignore[arg-type]
    return ListenerConfig(host="127.0.0.1", port=0, mode=mode, tls=settings)


def client_context(pki: TestPki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca_file))


async def test_implicit_tls_greets_inside_tls(start: Callable[..., object], pki: TestPki) -> None:
    server: Pop3Server = await start(tls_listener(pki, "implicit"))  # type: ignore[misc]
    port = server.addresses[0][1]

    def session() -> tuple[bytes, dict[str, list[str]], int]:
        client = poplib.POP3_SSL("localhost", port, context=client_context(pki))
        welcome = client.getwelcome()
        capa = client.capa()
        client.user("alice")
        client.pass_("secret")
        count = client.stat()[0]
        client.quit()
        return welcome, capa, count

    welcome, capa, count = await asyncio.to_thread(session)
    assert welcome.startswith(b"+OK") and count == 1
    assert "USER" in capa and "SASL" in capa and "STLS" not in capa


async def test_plaintext_client_on_implicit_port_gets_no_greeting(
    start: Callable[..., object], pki: TestPki
) -> None:
    server: Pop3Server = await start(tls_listener(pki, "implicit"))  # type: ignore[misc]
    reader, writer = await asyncio.open_connection(*server.addresses[0])
    writer.write(b"CAPA\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    assert b"+OK" not in data
    writer.close()


async def test_stls_upgrade_changes_capabilities(
    start: Callable[..., object], pki: TestPki
) -> None:
    server: Pop3Server = await start(tls_listener(pki))  # type: ignore[misc]
    port = server.addresses[0][1]

    def capabilities() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        client = poplib.POP3("localhost", port)
        before = client.capa()
        client.stls(context=client_context(pki))
        after = client.capa()
        with pytest.raises(poplib.error_proto, match="command not permitted when TLS active"):
            client._shortcmd("STLS")  # type: ignore[attr-defined]  # RFC 2595 section 4
        client.user("alice")
        client.pass_("secret")
        with pytest.raises(poplib.error_proto, match="not valid in this state"):
            client._shortcmd("STLS")  # type: ignore[attr-defined]
        client.quit()
        return before, after

    before, after = await asyncio.to_thread(capabilities)
    assert "STLS" in before and "USER" not in before and "SASL" not in before
    assert (
        "STLS" not in after
        and "USER" in after
        and after["SASL"] == ["PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"]
    )


def raw_stls(server: Pop3Server, pki: TestPki, first: bytes) -> ssl.SSLSocket:
    """Send `first` (which starts with STLS) in one write, then do the TLS handshake."""
    sock = socket.create_connection(server.addresses[0], timeout=5)
    stream = sock.makefile("rb")
    assert stream.readline().startswith(b"+OK")
    sock.sendall(first)
    assert stream.readline() == b"+OK Begin TLS negotiation now\r\n"
    return client_context(pki).wrap_socket(sock, server_hostname="localhost")


async def test_plaintext_pipelined_after_stls_is_discarded(
    start: Callable[..., object], pki: TestPki
) -> None:
    listener = ListenerConfig(
        host="127.0.0.1", port=0, tls=TlsSettings(pki.cert_file, pki.key_file), plaintext_auth=True
    )
    server: Pop3Server = await start(listener)  # type: ignore[misc]

    def attack() -> bytes:
        tls = raw_stls(server, pki, b"STLS\r\nUSER alice\r\n")
        tls.sendall(b"PASS secret\r\n")
        return tls.makefile("rb").readline()

    assert await asyncio.to_thread(attack) == b"-ERR PASS must follow a successful USER\r\n"


async def test_user_before_stls_is_forgotten(start: Callable[..., object], pki: TestPki) -> None:
    listener = ListenerConfig(
        host="127.0.0.1", port=0, tls=TlsSettings(pki.cert_file, pki.key_file), plaintext_auth=True
    )
    server: Pop3Server = await start(listener)  # type: ignore[misc]

    def attack() -> bytes:
        sock = socket.create_connection(server.addresses[0], timeout=5)
        stream = sock.makefile("rb")
        stream.readline()
        sock.sendall(b"USER alice\r\n")
        assert stream.readline().startswith(b"+OK")
        sock.sendall(b"STLS\r\n")
        assert stream.readline().startswith(b"+OK")
        tls = client_context(pki).wrap_socket(sock, server_hostname="localhost")
        tls.sendall(b"PASS secret\r\n")
        return tls.makefile("rb").readline()

    assert await asyncio.to_thread(attack) == b"-ERR PASS must follow a successful USER\r\n"


async def test_handshake_garbage_and_silence_close_only_those_connections(
    start: Callable[..., object], pki: TestPki
) -> None:
    server: Pop3Server = await start(tls_listener(pki, "implicit"), idle_timeout=600)  # type: ignore[misc]
    garbage_r, garbage_w = await asyncio.open_connection(*server.addresses[0])
    garbage_w.write(os.urandom(2000))
    assert b"+OK" not in await asyncio.wait_for(garbage_r.read(), 5)  # closed, maybe after an alert
    _, silent_w = await asyncio.open_connection(*server.addresses[0])
    ctx = client_context(pki)
    good_r, good_w = await asyncio.open_connection(
        *server.addresses[0], ssl=ctx, server_hostname="localhost"
    )
    assert (await good_r.readline()).startswith(b"+OK")
    good_w.write(b"CAPA\r\n")
    assert (await good_r.readuntil(b".\r\n")).startswith(b"+OK")
    garbage_w.close()
    silent_w.close()
    good_w.close()


async def test_silent_handshake_times_out(start: Callable[..., object], pki: TestPki) -> None:
    listener = ListenerConfig(
        host="127.0.0.1",
        port=0,
        mode="implicit",
        handshake_timeout=1.0,
        tls=TlsSettings(pki.cert_file, pki.key_file),
    )
    server: Pop3Server = await start(listener)  # type: ignore[misc]
    reader, writer = await asyncio.open_connection(*server.addresses[0])
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server, no greeting
    writer.close()


def openssl_greeting(port: int, *versions: str) -> bytes:
    command = [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-quiet",
        *versions,
        "-cipher",
        "DEFAULT:@SECLEVEL=0",
    ]
    done = subprocess.run(command, input=b"QUIT\r\n", capture_output=True, timeout=20)
    return done.stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_legacy_profile_accepts_tls1_and_modern_refuses_it(
    start: Callable[..., object], pki: TestPki
) -> None:
    server: Pop3Server = await start(
        tls_listener(pki, "implicit", profile="legacy"), tls_listener(pki, "implicit")
    )  # type: ignore[misc]
    legacy, modern = (port for _, port in server.addresses)
    assert (await asyncio.to_thread(openssl_greeting, legacy, "-tls1")).startswith(b"+OK")
    assert b"+OK" not in await asyncio.to_thread(openssl_greeting, modern, "-tls1")
    assert b"+OK" not in await asyncio.to_thread(openssl_greeting, modern, "-tls1_1")
    assert (await asyncio.to_thread(openssl_greeting, modern, "-tls1_2")).startswith(b"+OK")


async def fetch_certificate_issuer(port: int, ca: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    assert (await reader.readline()).startswith(b"+OK")
    issuer = dict(x[0] for x in writer.get_extra_info("peercert")["issuer"])
    writer.close()
    return str(issuer)


async def test_certificate_reload_serves_new_and_keeps_old_sessions(
    start: Callable[..., object], tmp_path: Path
) -> None:
    old, new = make_test_pki(tmp_path / "old"), make_test_pki(tmp_path / "new")
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(old.cert_file, live / "cert.pem")
    shutil.copy(old.key_file, live / "key.pem")
    listener = ListenerConfig(
        host="127.0.0.1",
        port=0,
        mode="implicit",
        plaintext_auth=True,
        tls=TlsSettings(live / "cert.pem", live / "key.pem"),
    )
    server: Pop3Server = await start(listener, certificate_check_interval=0.1)  # type: ignore[misc]
    port = server.addresses[0][1]
    ctx = ssl.create_default_context(cafile=str(old.ca_file))
    held_r, held_w = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    await held_r.readline()
    (live / "cert.pem").write_bytes(b"not a certificate")  # a half-written renewal
    server.reload_certificates()
    await fetch_certificate_issuer(port, old.ca_file)  # the broken file did not replace it
    shutil.copy(new.key_file, live / "key.pem")
    shutil.copy(new.cert_file, live / "cert.pem")
    for _ in range(50):  # the watcher notices the change
        await asyncio.sleep(0.1)
        try:
            await fetch_certificate_issuer(port, new.ca_file)
            break
        except ssl.SSLError:
            continue
    else:
        raise AssertionError("the new certificate was never served")
    held_w.write(b"CAPA\r\n")  # the session opened before the reload goes on
    assert (await held_r.readuntil(b".\r\n")).startswith(b"+OK")
    held_w.close()


def test_cert_command_writes_a_loadable_self_signed_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    assert (
        main(
            [
                "cert",
                "--cert",
                str(cert),
                "--key",
                str(key),
                "--host",
                "mail.example",
                "--host",
                "127.0.0.1",
            ]
        )
        == 0
    )
    assert "self-signed" in capsys.readouterr().out
    assert key.stat().st_mode & 0o777 == 0o600
    context = build_context(TlsSettings(cert, key))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2


def test_custom_profile_sets_version_and_ciphers(pki: TestPki) -> None:
    context = build_context(
        TlsSettings(pki.cert_file, pki.key_file, "custom", "TLSv1.3", "ECDHE+AESGCM")
    )
    assert context.minimum_version is ssl.TLSVersion.TLSv1_3
    with pytest.raises(Exception, match="cannot load certificate"):
        build_context(TlsSettings(pki.key_file, pki.key_file))


def anonymous_client() -> ssl.SSLContext:
    """A client offering only anonymous (aNULL) suites: it never checks who it talks to."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 has no anonymous suites
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("aNULL:@SECLEVEL=0")
    return context


async def test_legacy_profile_refuses_an_anonymous_cipher_client(
    start: Callable[..., object], pki: TestPki
) -> None:
    server: Pop3Server = await start(tls_listener(pki, "implicit", profile="legacy"))  # type: ignore[misc]
    host, port = server.addresses[0]
    connecting = asyncio.open_connection(host, port, ssl=anonymous_client())
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.wait_for(connecting, 10)
    # a client with authenticated suites still gets in on the same listener
    assert (await asyncio.to_thread(openssl_greeting, port, "-tls1")).startswith(b"+OK")


def test_legacy_cipher_list_has_no_anonymous_or_null_suite(pki: TestPki) -> None:
    context = build_context(TlsSettings(pki.cert_file, pki.key_file, "legacy"))
    names = [cipher["name"] for cipher in context.get_ciphers()]
    kinds = {cipher["auth"] for cipher in context.get_ciphers()} | {
        cipher.get("symmetric") for cipher in context.get_ciphers()
    }
    assert names and "auth-null" not in kinds and "null" not in kinds
    assert not [name for name in names if "ADH" in name or "AECDH" in name or "NULL" in name]
