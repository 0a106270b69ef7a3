"""Bridges in front of an OAuth2-only upstream (Graph, Gmail), for the real-client tests.

This module owns what those tests share: `start_mapped`, a bridge with one mapped account
whose refresh token the fake OAuth2 provider (`devkit.oauth_provider`) issued, so the
bridge turns it into access tokens as in production; `start_passthrough`, a bridge whose
devices bring their own token; `access_token`, a token as a device's own OAuth2 client gets
one; `xoauth2`, a device's `AUTH XOAUTH2` login; `stat`, a mapped login and STAT; and
`session`, a mapped login that runs any poplib commands and returns the PASS reply too,
with `refused`, `scan` and `told` to run inside it; and `sizes_counted_once`, what a bridge
in front of an upstream without exact sizes must cost: no download for a UIDL poll, one per
message once a size is asked for.
"""

from __future__ import annotations

import asyncio
import base64
import json
import poplib
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

from devkit.clients import Pop3Target
from devkit.oauth_provider import FakeOAuthProvider
from devkit.servers import Servers
from popbridge.accounts import (
    AccountAdmin,
    AccountsSettings,
    BackendDefaults,
    Keyring,
    MappedAuthenticator,
    Upstream,
    generate_key,
)
from popbridge.accounts.passwords import PasswordHasher, ScryptParams
from popbridge.config import Config, ListenerConfig, MaildropConfig, ServerConfig
from popbridge.contract import load_backend
from popbridge.frontend.server import Pop3Server
from popbridge.oauth2 import Provider
from popbridge.session.session import Services
from popbridge.session.throttle import Throttle, ThrottlePolicy
from popbridge.store import MemoryAccountRecords

T = TypeVar("T")
LOCAL_USER, LOCAL_PASSWORD = "printer", "Loc@l-pw 4411"
NO_DELAY = ThrottlePolicy(base_delay=0)  # no pause after a failed login


def _config(settings: dict[str, Any], maildrop: MaildropConfig | None) -> Config:
    return Config(
        source="test", backend_type=settings["type"], backend_settings=settings,
        listeners=(ListenerConfig(host="127.0.0.1", port=0, plaintext_auth=True),),
        server=ServerConfig(throttle=NO_DELAY), maildrop=maildrop or MaildropConfig(),
    )  # fmt: skip


async def start_mapped(
    settings: dict[str, Any], idp: FakeOAuthProvider, upstream_user: str, *,
    maildrop: MaildropConfig | None = None, refresh_token: str | None = None,
) -> Pop3Server:  # fmt: skip
    """A started bridge whose local user LOCAL_USER maps to `upstream_user` by OAuth2."""
    kind = settings["type"]
    provider = Provider("idp", f"{idp.url}/token", "bridge", "bridge-secret", scope="mail")
    accounts = AccountsSettings("mapped", Keyring.parse(generate_key()), {"idp": provider})
    defaults = BackendDefaults(kind, settings, "test")
    records, hasher = MemoryAccountRecords(), PasswordHasher(ScryptParams(n=2**4, r=8, p=1))
    backend = load_backend(kind, settings, source="test")
    auth = MappedAuthenticator(records, accounts, backend, defaults, hasher=hasher)
    admin = AccountAdmin(records, accounts, defaults, hasher=hasher)
    upstream = Upstream(upstream_user, "oauth2", oauth2="idp")
    secret = refresh_token or idp.issue_refresh_token("alice")
    await admin.add(LOCAL_USER, LOCAL_PASSWORD, upstream, secret)
    services = Services(backend=backend, authenticator=auth, throttle=Throttle(NO_DELAY))
    server = Pop3Server(_config(settings, maildrop), services)
    await server.start()
    return server


async def start_passthrough(servers: Servers, settings: dict[str, Any]) -> Pop3Server:
    """A started bridge (stopped with `servers`) whose devices bring their own token."""
    backend = load_backend(settings["type"], settings, source="test")
    return await servers.start(_config(settings, None), backend)


def target(server: Pop3Server) -> Pop3Target:
    host, port = server.addresses[0][:2]
    return Pop3Target(host, port, LOCAL_USER, LOCAL_PASSWORD)


def access_token(idp: FakeOAuthProvider, refresh: str) -> str:
    """An access token from the fake provider, as a device's own OAuth2 client gets one."""
    form = urllib.parse.urlencode({
        "grant_type": "refresh_token", "refresh_token": refresh,
        "client_id": "bridge", "client_secret": "bridge-secret",
    }).encode()  # fmt: skip
    with urllib.request.urlopen(f"{idp.url}/token", data=form, timeout=10) as response:
        token: str = json.loads(response.read())["access_token"]
    return token


def xoauth2(server: Pop3Server, user: str, token: str) -> tuple[bytes, int]:
    """AUTH XOAUTH2 as a device sends it; the reply and the STAT count (-1 if refused)."""
    host, port = server.addresses[0][:2]
    client = poplib.POP3(host, port, timeout=20)
    try:
        blob = base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode())
        # poplib has no AUTH; _shortcmd sends one line and checks the +OK (typeshed omits it)
        reply: bytes = client._shortcmd("AUTH XOAUTH2 " + blob.decode())  # type: ignore[attr-defined]
        return reply, client.stat()[0]
    except poplib.error_proto as refused:
        return refused.args[0], -1
    finally:
        client.close()


def stat(server: Pop3Server) -> tuple[int, bytes]:
    """Log in to the mapped account and STAT: (count, b"") or (-1, the refusal)."""
    host, port = server.addresses[0][:2]
    client = poplib.POP3(host, port, timeout=20)
    try:
        client.user(LOCAL_USER)
        try:
            client.pass_(LOCAL_PASSWORD)
        except poplib.error_proto as refused:
            return -1, refused.args[0]
        return int(client.stat()[0]), b""
    finally:
        client.quit()


def session(server: Pop3Server, commands: Callable[[poplib.POP3], T]) -> tuple[bytes, T]:
    """Log in to the mapped account, run `commands`, QUIT; the PASS reply and their result."""
    host, port = server.addresses[0][:2]
    client = poplib.POP3(host, port, timeout=20)
    try:
        client.user(LOCAL_USER)
        return client.pass_(LOCAL_PASSWORD), commands(client)
    finally:
        client.quit()


def refused(command: Callable[[], object]) -> bytes:
    """The -ERR line `command` was answered with; fails if it succeeded."""
    try:
        command()
    except poplib.error_proto as error:
        reply: bytes = error.args[0]
        return reply
    raise AssertionError("the command succeeded")


def scan(client: poplib.POP3) -> list[int]:
    """LIST: the sizes."""
    return [int(line.split()[1]) for line in client.list()[1]]


def told(client: poplib.POP3, numbers: list[int]) -> list[tuple[bytes, bytes, int]]:
    """LIST n, then RETR n's status line, data and what LIST said, for each of `numbers`."""
    found = []
    for n in numbers:
        reply: bytes = client.list(n)  # type: ignore[assignment]  # typeshed: only LIST
        listed = int(reply.split()[2])
        status, lines, _ = client.retr(n)
        found.append((status, b"".join(line + b"\r\n" for line in lines), listed))
    return found


async def sizes_counted_once(
    server: Pop3Server, expected: list[bytes], downloads: Callable[[], int], *, per_retr: int
) -> None:
    """A UIDL poll downloads nothing; STAT and LIST download each message once and tell what
    RETR sends (RFC 1939 sections 5 and 11), a RETR then costing `per_retr` downloads; the
    next session downloads nothing."""
    welcome, uidls = await asyncio.to_thread(session, server, lambda c: c.uidl()[1])
    assert len(uidls) == len(expected) and downloads() == 0  # a poll costs no download
    assert welcome == f"+OK maildrop has {len(expected)} messages".encode()  # octets unknown
    numbers = [len(expected), 1]

    def look(client: poplib.POP3) -> tuple[list[int], tuple[int, int], Any]:
        return scan(client), client.stat(), told(client, numbers)

    _, (sizes, status, sent) = await asyncio.to_thread(session, server, look)
    assert sizes == [len(m) for m in expected] and status == (len(expected), sum(sizes))
    counted = len(expected) + per_retr * len(numbers)  # LIST counted each once
    assert downloads() == counted
    for n, (reply, data, listed) in zip(numbers, sent, strict=True):
        assert reply == f"+OK {listed} octets".encode() and data == expected[n - 1]
    welcome, again = await asyncio.to_thread(session, server, scan)
    assert welcome == f"+OK maildrop has {len(sizes)} messages ({sum(sizes)} octets)".encode()
    assert again == sizes and downloads() == counted  # remembered
