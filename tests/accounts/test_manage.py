"""AccountAdmin's own refusals, and `build_services` assembling mapped accounts over SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from popbridge.accounts import (
    AccountAdmin,
    AccountError,
    AccountsSettings,
    BackendDefaults,
    Keyring,
    MappedAuthenticator,
    Upstream,
    generate_key,
)
from popbridge.accounts.manage import backend_table
from popbridge.accounts.passwords import PasswordHasher
from popbridge.app import build_services
from popbridge.config import parse_config
from popbridge.errors import ConfigError
from popbridge.store import MemoryAccountRecords

DEFAULTS = BackendDefaults("imap", {"type": "imap", "host": "127.0.0.1", "tls": "none"}, "t")


@pytest.fixture
def admin(keyring: Keyring, hasher: PasswordHasher) -> AccountAdmin:
    return AccountAdmin(MemoryAccountRecords(), AccountsSettings("mapped", keyring), DEFAULTS,
                        hasher=hasher)  # fmt: skip


async def test_empty_secrets_and_unknown_providers_are_refused(admin: AccountAdmin) -> None:
    with pytest.raises(AccountError, match="must not be empty"):
        await admin.add("printer", "", Upstream("a"), "s")
    with pytest.raises(AccountError, match="must not be empty"):
        await admin.add("printer", "p", Upstream("a"), "")
    with pytest.raises(ConfigError, match=r"accounts\.oauth2\.google: no such provider"):
        await admin.add("printer", "p", Upstream("a", "oauth2", oauth2="google"), "rt")
    await admin.add("printer", "p", Upstream("a"), "s")
    with pytest.raises(AccountError, match="must not be empty"):
        await admin.passwd("printer", "")
    with pytest.raises(AccountError, match="no account 'scanner'"):
        await admin.passwd("scanner", "p")


async def test_broken_records_are_reported_by_name(admin: AccountAdmin) -> None:
    await admin.add("printer", "p", Upstream("a"), "s")
    await admin.records.put("copy", await admin.records.get("printer") or b"")
    await admin.records.put("junk", b"[]")
    found = {str(item) if isinstance(item, AccountError) else item.name
             for item in await admin.listing()}  # fmt: skip
    assert found == {
        "printer",
        "the record stored as 'copy' names 'printer'",
        "account 'junk': not a JSON object",
    }
    with pytest.raises(AccountError):
        await admin.rekey()


def test_backend_table_merges_or_replaces() -> None:
    assert backend_table(DEFAULTS, {"port": 2}) == (
        "imap", {"type": "imap", "host": "127.0.0.1", "tls": "none", "port": 2}
    )  # fmt: skip
    assert backend_table(DEFAULTS, {"type": "jmap", "url": "u"}) == (
        "jmap", {"type": "jmap", "url": "u"}
    )  # fmt: skip


async def test_build_services_with_mapped_accounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PB_KEY", generate_key())
    data = {
        "listeners": [{"port": 0}],
        "backend": {"type": "imap", "host": "127.0.0.1", "tls": "none"},
        "store": {"type": "sqlite", "path": str(tmp_path / "state.sqlite3")},
        "accounts": {"mode": "mapped", "key_env": "PB_KEY"},
        "server": {"max_logins_in_flight": 3, "min_logins_in_flight": 3},
    }
    services, store = await build_services(parse_config(data, source=str(tmp_path / "c.toml")))
    try:
        assert isinstance(services.authenticator, MappedAuthenticator)
        assert services.logins.limit == 3
        assert services.logins.floor == 3  # floor = cap: no pacing
        assert services.listings is store.listings  # kept in the store across restarts
    finally:
        await store.close()
    data["accounts"] = {"mode": "mapped"}
    with pytest.raises(ConfigError, match="key_file"):
        await build_services(parse_config(data, source=str(tmp_path / "c.toml")))
