"""End to end: POP3 client -> bridge (mapped account) -> XOAUTH2 -> a real Dovecot that asks
the fake provider to introspect every token. Nothing here is mocked but the provider."""

from __future__ import annotations

import asyncio
import base64
import logging
import poplib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devkit.dovecot import Dovecot
from devkit.dovecot_oauth import start_oauth_dovecot
from devkit.oauth_provider import FakeOAuthProvider
from popbridge.accounts import (
    AccountAdmin,
    AccountsSettings,
    BackendDefaults,
    Keyring,
    MappedAuthenticator,
    Upstream,
)
from popbridge.accounts.passwords import PasswordHasher
from popbridge.config import Config, ListenerConfig, ServerConfig
from popbridge.contract import load_backend
from popbridge.frontend.server import Pop3Server
from popbridge.oauth2 import AccessTokens
from popbridge.session.session import Services
from popbridge.session.throttle import Throttle, ThrottlePolicy
from popbridge.store import MemoryAccountRecords
from tests.accounts.conftest import provider_for

pytestmark = pytest.mark.dovecot

LOCAL_PASSWORD = "Loc@l-pw 7731"  # distinctive, so a grep of the logs cannot hit by chance
UPSTREAM_PASSWORD = "Upstr3am-pw-5519"
NO_DELAY = ThrottlePolicy(base_delay=0)


@pytest.fixture(scope="module")
def idp() -> Iterator[FakeOAuthProvider]:
    with FakeOAuthProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def upstream(idp: FakeOAuthProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    dovecot = start_oauth_dovecot(
        tmp_path_factory.mktemp("dovecot-oauth"),
        {"alice": UPSTREAM_PASSWORD},
        introspection_url=f"{idp.url}/introspect",
    )
    yield dovecot
    dovecot.stop()


@pytest.fixture
def fake(idp: FakeOAuthProvider) -> FakeOAuthProvider:
    """The module's provider with every knob back at its default."""
    idp.down, idp.hang, idp.rotate, idp.access_lifetime = False, 0.0, False, 3600
    idp.grants.clear()
    return idp


class Clock:
    now = 5000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Bridge:
    server: Pop3Server
    admin: AccountAdmin
    clock: Clock
    seeded: list[bytes]

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.addresses[0][:2]
        return host, port


@pytest.fixture
async def bridge(
    upstream: Dovecot, fake: FakeOAuthProvider, keyring: Keyring, hasher: PasswordHasher
) -> AsyncIterator[Bridge]:
    upstream.reset_mailbox("alice")
    seeded = upstream.seed_generated("alice", 3, 1500)
    settings = {"type": "imap", "host": upstream.host, "port": upstream.imap_port, "tls": "none",
                "timeout": 10}  # fmt: skip
    config = Config(
        source="test", backend_type="imap", backend_settings=settings,
        listeners=(ListenerConfig(host="127.0.0.1", port=0, plaintext_auth=True),),
        server=ServerConfig(throttle=NO_DELAY),
    )  # fmt: skip
    accounts = AccountsSettings("mapped", keyring, {"custom": provider_for(fake)})
    defaults = BackendDefaults("imap", settings, "test")
    records, clock = MemoryAccountRecords(), Clock()
    tokens = AccessTokens(clock=clock, deadline=5)
    backend = load_backend("imap", settings, source="test")
    auth = MappedAuthenticator(records, accounts, backend, defaults, hasher=hasher, tokens=tokens)
    services = Services(backend=backend, authenticator=auth, throttle=Throttle(NO_DELAY))
    server = Pop3Server(config, services)
    await server.start()
    yield Bridge(server, AccountAdmin(records, accounts, defaults, hasher=hasher), clock, seeded)
    await server.stop()


async def add_oauth_account(bridge: Bridge, fake: FakeOAuthProvider) -> str:
    refresh = fake.issue_refresh_token("alice")
    await bridge.admin.add(
        "printer", LOCAL_PASSWORD, Upstream("alice", "oauth2", oauth2="custom"), refresh
    )
    return refresh


def retrieve(address: tuple[str, int], user: str = "printer") -> list[bytes]:
    client = poplib.POP3(*address, timeout=20)
    try:
        client.user(user)
        client.pass_(LOCAL_PASSWORD)
        count = len(client.list()[1])
        return [b"\r\n".join(client.retr(n)[1]) + b"\r\n" for n in range(1, count + 1)]
    finally:
        client.quit()


def refused(address: tuple[str, int], user: str = "printer", password: str = LOCAL_PASSWORD) -> str:
    client = poplib.POP3(*address, timeout=20)
    try:
        client.user(user)
        with pytest.raises(poplib.error_proto) as caught:
            client.pass_(password)
        reply: bytes = caught.value.args[0]
        return reply.decode()
    finally:
        client.close()


def dovecot_log(upstream: Dovecot) -> str:
    return (upstream.directory / "dovecot.log").read_text(errors="replace")


async def test_xoauth2_end_to_end(
    bridge: Bridge, fake: FakeOAuthProvider, upstream: Dovecot
) -> None:
    await add_oauth_account(bridge, fake)
    introspected = fake.introspections
    assert await asyncio.to_thread(retrieve, bridge.address) == bridge.seeded
    assert fake.grants["refresh_token"] == 1
    assert fake.introspections > introspected  # Dovecot checked the token with the provider
    assert "user=<alice>, method=XOAUTH2" in dovecot_log(upstream)
    # a second session within the token's life reuses it: no new refresh
    assert await asyncio.to_thread(retrieve, bridge.address) == bridge.seeded
    assert fake.grants["refresh_token"] == 1


async def test_mapped_password_account_end_to_end(bridge: Bridge) -> None:
    await bridge.admin.add("scanner", LOCAL_PASSWORD, Upstream("alice"), UPSTREAM_PASSWORD)
    assert await asyncio.to_thread(retrieve, bridge.address, "Scanner") == bridge.seeded
    # the upstream login itself is no local account: a device cannot use it here
    reply = await asyncio.to_thread(refused, bridge.address, "alice", UPSTREAM_PASSWORD)
    assert reply.startswith("-ERR [AUTH]")


async def test_wrong_local_password_is_auth_error(bridge: Bridge, fake: FakeOAuthProvider) -> None:
    await add_oauth_account(bridge, fake)
    reply = await asyncio.to_thread(refused, bridge.address, "printer", "wrong")
    assert reply.startswith("-ERR [AUTH]") and fake.grants["refresh_token"] == 0


async def test_expiry_triggers_a_refresh(bridge: Bridge, fake: FakeOAuthProvider) -> None:
    await add_oauth_account(bridge, fake)
    await asyncio.to_thread(retrieve, bridge.address)
    first = set(fake.access_tokens())
    fake.expire_access_tokens()
    bridge.clock.now += 3600  # our cache agrees: the token is past its life
    assert await asyncio.to_thread(retrieve, bridge.address) == bridge.seeded
    assert fake.grants["refresh_token"] == 2 and set(fake.access_tokens()) - first


async def test_token_revoked_before_expiry_is_renewed(
    bridge: Bridge, fake: FakeOAuthProvider
) -> None:
    await add_oauth_account(bridge, fake)
    await asyncio.to_thread(retrieve, bridge.address)
    fake.expire_access_tokens()  # Dovecot now refuses it, though our cache thinks it is fresh
    assert await asyncio.to_thread(retrieve, bridge.address) == bridge.seeded
    assert fake.grants["refresh_token"] == 2


async def test_revoked_refresh_token(
    bridge: Bridge, fake: FakeOAuthProvider, caplog: pytest.LogCaptureFixture
) -> None:
    refresh = await add_oauth_account(bridge, fake)
    fake.revoke(refresh)
    with caplog.at_level(logging.INFO):
        reply = await asyncio.to_thread(refused, bridge.address)
    assert reply.startswith("-ERR [AUTH]")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("refused the OAuth2 refresh token" in line and "accounts add printer" in line
               for line in errors)  # fmt: skip


async def test_provider_down_is_sys_temp(bridge: Bridge, fake: FakeOAuthProvider) -> None:
    await add_oauth_account(bridge, fake)
    fake.down = True
    reply = await asyncio.to_thread(refused, bridge.address)
    assert reply.startswith("-ERR [SYS/TEMP]")
    fake.down = False
    assert await asyncio.to_thread(retrieve, bridge.address) == bridge.seeded


def b64_forms(secret: str, user: str = "alice") -> set[str]:
    """The secret in base64 at every alignment, and inside an XOAUTH2 response."""
    forms = {secret}
    for pad in ("", "x", "xx"):
        encoded = base64.b64encode((pad + secret).encode()).decode()
        forms.add(encoded[4 if pad else 0 : -4])  # the part that depends only on the secret
    forms.add(base64.b64encode(f"user={user}\x01auth=Bearer {secret}\x01\x01".encode()).decode())
    forms.add(base64.b64encode(f"\0{user}\0{secret}".encode()).decode())
    return forms


async def test_no_secret_reaches_the_logs(
    bridge: Bridge, fake: FakeOAuthProvider, caplog: pytest.LogCaptureFixture
) -> None:
    fake.rotate = True  # exercise refresh-token rotation and re-sealing too
    caplog.set_level(logging.DEBUG)
    first_refresh = await add_oauth_account(bridge, fake)
    await bridge.admin.add("scanner", LOCAL_PASSWORD, Upstream("alice"), UPSTREAM_PASSWORD)
    await asyncio.to_thread(retrieve, bridge.address)
    await asyncio.to_thread(retrieve, bridge.address, "scanner")
    fake.expire_access_tokens()
    bridge.clock.now += 3600
    await asyncio.to_thread(retrieve, bridge.address)
    await asyncio.to_thread(refused, bridge.address, "printer", "wrong " + LOCAL_PASSWORD)
    assert fake.grants["refresh_token"] == 2  # two refreshes, one rotation each
    secrets = [LOCAL_PASSWORD, "wrong " + LOCAL_PASSWORD, UPSTREAM_PASSWORD, first_refresh]
    secrets += fake.access_tokens() + fake.refresh_tokens(active=False)
    logged = "\n".join(
        f"{record.getMessage()} {record.args!r} {record.exc_text or ''}"
        for record in caplog.records
    )
    assert len(caplog.records) > 10 and "new access token" in logged
    for secret in secrets:
        for form in b64_forms(secret):
            assert form not in logged, f"a secret reached the logs ({len(form)} chars)"


async def test_cli_add_check_logs_in_upstream(
    bridge: Bridge, fake: FakeOAuthProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from popbridge.cli import accounts as cli_accounts
    from popbridge.config import parse_config

    top = argparse.ArgumentParser()
    cli_accounts.add_parser(top.add_subparsers(dest="command"))
    (tmp_path / "pw").write_text(LOCAL_PASSWORD + "\n")
    (tmp_path / "rt").write_text(fake.issue_refresh_token("alice") + "\n")
    args = top.parse_args([
        "accounts", "add", "fax", "--upstream-user", "alice", "--oauth2", "custom", "--check",
        "--password-file", str(tmp_path / "pw"), "--secret-file", str(tmp_path / "rt"),
        "--config", "unused",
    ])  # fmt: skip
    defaults = bridge.admin.defaults
    config = parse_config(
        {"listeners": [{"port": 0}], "backend": dict(defaults.settings)}, source="test"
    )
    code = await cli_accounts.execute(
        args, config, bridge.admin.records, bridge.admin.settings, hasher=bridge.admin.hasher
    )
    assert code == 0 and "upstream login as 'alice': ok" in capsys.readouterr().out
    assert await asyncio.to_thread(retrieve, bridge.address, "fax") == bridge.seeded
    fake.revoke((tmp_path / "rt").read_text().strip())
    args.replace, args.name = True, "fax2"
    assert (
        await cli_accounts.execute(args, config, bridge.admin.records, bridge.admin.settings) == 1
    )
    assert "refresh token refused" in capsys.readouterr().err
