"""The JMAP backend against a hostile or misconfigured upstream: who the credentials name,
where they go, and how much is read.

This module owns three promises. A bearer token logs in only as the user the JMAP Session
says it belongs to (its `username`, RFC 8620 section 2), so a token holder cannot take
another user's maildrop lock or write rows in their UID map. Credentials go only to the
Session's origin and its API URLs, over https or to this machine, whatever case the
configured scheme is written in and wherever a server redirects or points. And a reply is
read only up to `max_json_size`, however it is framed or nested.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from backends.jmap import create
from backends.jmap.config import JmapSettings, parse_settings
from backends.jmap.mailbox import JmapMailbox
from backends.jmap.transport import may_carry_credentials, origin
from devkit import fake_jmap
from devkit.fake_jmap import FakeEmail, FakeJmap
from devkit.tlsca import TestPki, make_test_pki
from popbridge.contract import Backend, Credentials
from popbridge.errors import AuthFailed, BackendFailure, ConfigError
from tests.backends.bridges import jmap_bridge
from tests.backends.contract import message

TOKEN = Credentials(fake_jmap.USER, fake_jmap.TOKEN, mechanism="oauth2")
PASSWORD = Credentials(fake_jmap.USER, fake_jmap.PASSWORD)


def backend(session_url: str, **overrides: Any) -> Backend:
    table = {"type": "jmap", "session_url": session_url, "timeout": 5} | overrides
    return create(table, source="test.toml")


def fake_backend(fake: FakeJmap, **overrides: Any) -> Backend:
    return backend(fake.url + "/.well-known/jmap", **overrides)


def credentialed(fake: FakeJmap) -> list[str]:
    """The paths `fake` was sent an Authorization header on."""
    return [path for path, authorization in fake.authorizations if authorization]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def tls_fake(pki: TestPki) -> AsyncIterator[FakeJmap]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    async with FakeJmap([FakeEmail("e1", message("one"))], tls=context) as fake:
        yield fake


@pytest.fixture
async def elsewhere() -> AsyncIterator[FakeJmap]:
    """Another origin, over plain http: it must never be sent credentials."""
    async with FakeJmap([FakeEmail("e1", message("one"))]) as fake:
        yield fake


# ------------------------------------------------------- the token's own user


@pytest.mark.parametrize("claimed", ["mallory", "user2", "us"])
async def test_a_bearer_token_logs_in_only_as_its_user(claimed: str) -> None:
    async with FakeJmap([FakeEmail("e1", message("one"))]) as fake:
        with pytest.raises(AuthFailed, match="token"):
            await fake_backend(fake).open(Credentials(claimed, fake_jmap.TOKEN, "oauth2"))
        mailbox = await fake_backend(fake).open(TOKEN)
        await mailbox.close()


async def test_the_user_name_is_compared_without_case() -> None:
    async with FakeJmap([FakeEmail("e1", message("one"))]) as fake:
        fake.username = "User@Example.NET"
        mailbox = await fake_backend(fake).open(
            Credentials("user@example.net", fake_jmap.TOKEN, "oauth2")
        )
        await mailbox.close()


async def test_a_session_without_a_username_cannot_bind_a_token() -> None:
    """The account's `name` (here USER) is a label its owner may choose: not trusted."""
    async with FakeJmap([FakeEmail("e1", message("one"))]) as fake:
        fake.username = ""
        with pytest.raises(AuthFailed):
            await fake_backend(fake).open(TOKEN)
        mailbox = await fake_backend(fake).open(PASSWORD)  # Basic: the server checked it
        await mailbox.close()


async def test_a_password_login_is_not_compared() -> None:
    """Basic credentials are checked against their user name by the server itself."""
    async with FakeJmap([FakeEmail("e1", message("one"))]) as fake:
        fake.username = "someone-else"
        mailbox = await fake_backend(fake).open(PASSWORD)
        await mailbox.close()


async def pop3_xoauth2(port: int, user: str, token: str) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [await reader.readline()]
    sasl = base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode())
    writer.write(b"AUTH XOAUTH2 " + sasl + b"\r\n")
    lines.append(await reader.readline())
    if lines[-1].startswith(b"+ "):  # RFC 7628 3.2.2: the error is a challenge first
        writer.write(b"\r\n")
        lines.append(await reader.readline())
    writer.write(b"QUIT\r\n")
    writer.close()
    return lines


async def test_pop3_auth_with_another_users_token_is_err_auth() -> None:
    emails = [FakeEmail("e1", message("one"))]
    async with FakeJmap(emails) as fake, jmap_bridge(fake.url) as port:
        refused = await pop3_xoauth2(port, "mallory", fake_jmap.TOKEN)
        accepted = await pop3_xoauth2(port, fake_jmap.USER, fake_jmap.TOKEN)
    assert refused[-1].startswith(b"-ERR [AUTH]")
    assert accepted[-1].startswith(b"+OK")


# ------------------------------------------------- where credentials may go


async def test_an_upper_case_https_scheme_still_refuses_a_redirect_to_http(
    tls_fake: FakeJmap, elsewhere: FakeJmap, pki: TestPki
) -> None:
    tls_fake.redirect = elsewhere.url + "/jmap/session"
    url = "HTTPS" + tls_fake.url.removeprefix("https") + "/.well-known/jmap"
    with pytest.raises(BackendFailure, match="redirect"):
        await backend(url, ca_file=str(pki.ca_file)).open(PASSWORD)
    assert credentialed(elsewhere) == []


async def test_an_upper_case_https_session_may_not_point_its_api_to_http(
    tls_fake: FakeJmap, elsewhere: FakeJmap, pki: TestPki
) -> None:
    tls_fake.session_fields["apiUrl"] = elsewhere.url + "/jmap/api/"
    url = "HTTPS" + tls_fake.url.removeprefix("https") + "/jmap/session"
    with pytest.raises(BackendFailure, match="apiUrl"):
        await backend(url, ca_file=str(pki.ca_file)).open(PASSWORD)
    assert credentialed(elsewhere) == []


async def test_a_redirect_to_another_origin_is_refused(elsewhere: FakeJmap) -> None:
    async with FakeJmap([FakeEmail("e1", message("one"))]) as fake:
        fake.redirect = elsewhere.url + "/jmap/session"
        with pytest.raises(BackendFailure, match="session_url"):
            await fake_backend(fake).open(PASSWORD)
    assert credentialed(elsewhere) == []


async def test_credentials_go_to_the_sessions_api_urls_and_nowhere_else(
    elsewhere: FakeJmap,
) -> None:
    """The Session may name another origin for its API (RFC 8620 section 2): that one gets
    the credentials; a request anywhere else is refused before anything is sent."""
    async with FakeJmap([FakeEmail("e1", message("one"))]) as fake:
        fake.session_fields["downloadUrl"] = (
            elsewhere.url + "/jmap/download/{accountId}/{blobId}/{name}?accept={type}"
        )
        mailbox = await fake_backend(fake).open(PASSWORD)
        try:
            assert isinstance(mailbox, JmapMailbox)
            (entry,) = await mailbox.list()
            pieces = [piece async for piece in mailbox.fetch(entry.identity)]
            assert b"".join(pieces) == message("one")
            async with FakeJmap() as third:
                with pytest.raises(BackendFailure, match="credentials"):
                    await mailbox._api.transport.fetch("GET", third.url + "/jmap/session")
                assert third.authorizations == []
        finally:
            await mailbox.close()
    assert [p for p in credentialed(elsewhere) if not p.startswith("/jmap/download/")] == []


def test_origins_and_the_credentials_rule() -> None:
    assert origin("HTTPS://Mail.Example.NET/x") == origin("https://mail.example.net:443/y")
    assert origin("http://h/") == ("http", "h", 80)
    trusted = {origin("https://mail.example.net"), origin("http://127.0.0.1:8080")}
    assert may_carry_credentials("https://MAIL.example.net/api", trusted)
    assert may_carry_credentials("http://127.0.0.1:8080/api", trusted)
    assert not may_carry_credentials("https://evil.example/api", trusted)
    assert not may_carry_credentials("http://mail.example.net/api", trusted)
    cleartext = {origin("http://mail.example.net")}
    assert not may_carry_credentials("http://mail.example.net/api", cleartext)


@pytest.mark.parametrize(
    "table",
    [{"url": "http://mail.example.net"}, {"session_url": "HTTP://mail.example.net/jmap"}],
)
def test_cleartext_http_is_refused_unless_loopback(table: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        create({"type": "jmap", **table}, source="test.toml")


def settings(session_url: str, **overrides: Any) -> JmapSettings:
    table = {"type": "jmap", "session_url": session_url} | overrides
    return parse_settings(table, source="test.toml")


def test_the_configured_scheme_is_normalised() -> None:
    assert settings("HTTPS://mail.example.net/jmap").session_url == "https://mail.example.net/jmap"
    assert settings("HTTP://localhost:8080/jmap").session_url == "http://localhost:8080/jmap"


# ------------------------------------------------------------ bounded replies


@pytest.fixture
async def hostile() -> AsyncIterator[dict[str, Any]]:
    """A Session resource that answers with whatever `script["body"]` says, streamed in
    pieces without a Content-Length when `script["stream"]` is set."""
    script: dict[str, Any] = {"body": b"{}", "stream": False}

    async def session(request: web.Request) -> web.StreamResponse:
        body: bytes = script["body"]
        if not script["stream"]:
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 65536):
            await response.write(body[start : start + 65536])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/jmap/session", session)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    script["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}/jmap/session"
    yield script
    await runner.cleanup()


@pytest.mark.parametrize("stream", [False, True], ids=["declared", "chunked"])
async def test_a_reply_over_max_json_size_is_refused(hostile: dict[str, Any], stream: bool) -> None:
    hostile["body"] = b'{"padding": "' + b"x" * (3 << 20) + b'"}'
    hostile["stream"] = stream
    with pytest.raises(BackendFailure, match="max_json_size"):
        await backend(hostile["url"], max_json_size=1 << 20).open(PASSWORD)


async def test_deeply_nested_json_is_a_backend_failure(hostile: dict[str, Any]) -> None:
    hostile["body"] = b"[" * 200_000 + b"]" * 200_000
    with pytest.raises(BackendFailure):
        await backend(hostile["url"]).open(PASSWORD)


def test_max_json_size_has_a_generous_default_and_a_floor() -> None:
    assert settings("https://mail.example.net/jmap").max_json_size == 64 << 20
    with pytest.raises(ConfigError, match="max_json_size"):
        settings("https://mail.example.net/jmap", max_json_size=1000)
