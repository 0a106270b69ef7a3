"""What the status page gathers: certificate expiry from the files as they are now, and mapped
accounts with their token health, without ever reading a secret."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devkit.memory_backend import MemoryBackend
from devkit.oauth_provider import FakeOAuthProvider
from popbridge.accounts import AccountAdmin, AccountsSettings, Keyring, MappedAuthenticator
from popbridge.accounts.manage import BackendDefaults
from popbridge.accounts.passwords import PasswordHasher
from popbridge.accounts.records import Upstream
from popbridge.admin import status
from popbridge.config import Config, ListenerConfig
from popbridge.frontend.tls import TlsSettings, make_self_signed
from popbridge.oauth2.tokens import RefreshRevoked
from popbridge.store import MemoryAccountRecords
from popbridge.telemetry import metrics
from tests.accounts.conftest import fake, hasher, keyring, provider_for

__all__ = ["fake", "hasher", "keyring"]  # the mapped-account tests' fixtures, used here too

DEFAULTS = BackendDefaults("imap", {"type": "imap", "host": "mail.example.org"}, "t.toml")


def test_certificate_expiry_from_the_files_and_a_file_that_does_not_load(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed(cert, key, ["pop.example.org"], days=10)
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate")
    listeners = (
        ListenerConfig(name="good", tls=TlsSettings(cert, key)),
        ListenerConfig(name="bad", tls=TlsSettings(broken, key)),
        ListenerConfig(name="plain"),
    )
    config = Config(source="t", listeners=listeners, backend_type="imap")
    good, bad = status.certificates(config)
    assert good.subject == "CN=pop.example.org" and good.not_after is not None
    days = good.days_left(time.time())
    assert days is not None and 9 < days <= 10
    assert bad.not_after is None and bad.problem == "cannot load: ValueError"
    expiry = metrics.REGISTRY.get_sample_value(
        "popbridge_certificate_expiry_timestamp_seconds", {"listener": "good"}
    )
    assert expiry == good.not_after


async def test_mapped_accounts_with_token_health_and_never_a_secret(
    keyring: Keyring, hasher: PasswordHasher, fake: FakeOAuthProvider
) -> None:
    records = MemoryAccountRecords()
    settings = AccountsSettings("mapped", keyring, {"custom": provider_for(fake)})
    backend = MemoryBackend()
    admin = AccountAdmin(records, settings, DEFAULTS, hasher=hasher)
    auth = MappedAuthenticator(records, settings, backend, DEFAULTS, hasher=hasher)
    assert await status.accounts(records, object()) == []  # passthrough: none
    await admin.add("printer", "local-pw", Upstream("alice@example.org"), "upstream-PW-9f8e")
    refresh = fake.issue_refresh_token("bob")
    await admin.add("scanner", "local-pw", Upstream("bob", "oauth2", oauth2="custom"), refresh)
    await records.put("broken", b"{}")
    shown = {a.name: a for a in await status.accounts(records, auth)}
    assert shown["printer"].token_health == "password (no token)"
    assert shown["scanner"].token_health == "no access token fetched yet"
    assert shown["scanner"].upstream_user == "bob" and shown["scanner"].mechanism == "oauth2"
    assert shown["broken"].token_health.startswith("unreadable record")
    await auth.authenticate("scanner", "local-pw")
    shown = {a.name: a for a in await status.accounts(records, auth)}
    assert shown["scanner"].token_health.startswith("access token valid ")
    fake.revoke(refresh)
    auth.tokens.forget("scanner")
    with pytest.raises(RefreshRevoked):
        await auth.authenticate("scanner", "local-pw")
    shown = {a.name: a for a in await status.accounts(records, auth)}
    assert shown["scanner"].token_health == "refresh token refused"
    assert "upstream-PW-9f8e" not in repr(shown) and refresh not in repr(shown)
