"""`[accounts]`: the mode, the key sources, OAuth2 provider tables, and app assembly."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from popbridge.accounts import MappedAuthenticator, generate_key, parse_accounts
from popbridge.accounts.passthrough import PassthroughAuthenticator
from popbridge.app import build_authenticator
from popbridge.config import load_config, parse_config
from popbridge.contract import load_backend
from popbridge.errors import ConfigError
from popbridge.store import MemoryStore


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "accounts.key"
    path.write_text(f"# current key first\n{generate_key()}\n{generate_key()}\n")
    path.chmod(0o600)
    return path


def parse(table: dict[str, Any], **kw: Any):  # type: ignore[no-untyped-def]
    return parse_accounts(table, source="t.toml", **kw)


def test_passthrough_is_the_default() -> None:
    assert parse({}).mode == "passthrough" and parse({}).keyring is None
    with pytest.raises(ConfigError, match=r"t\.toml: accounts\.key_file: unknown key"):
        parse({"key_file": "x"})


def test_mapped_with_a_key_file_of_several_keys(key_file: Path) -> None:
    settings = parse({"mode": "mapped", "key_file": str(key_file)})
    first = key_file.read_text().splitlines()[1]
    assert settings.keyring is not None and len(settings.keyring._keys) == 2
    assert settings.keyring.primary_id == type(settings.keyring).parse(first).primary_id
    assert settings.http_timeout == 15.0 and settings.refresh_margin == 120.0


def test_mapped_with_a_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PB_KEY", generate_key())
    assert parse({"mode": "mapped", "key_env": "PB_KEY"}).keyring is not None
    with pytest.raises(ConfigError, match=r"accounts\.key_env: environment variable NOPE"):
        parse({"mode": "mapped", "key_env": "NOPE"})


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"mode": "mapped"}, "accounts.key_file: give exactly one of key_file, key_env"),
        ({"mode": "mapped", "key": "x"}, "accounts.key: keep the key out of the config"),
        ({"mode": "mapped", "key_env": "PB_BAD"}, "accounts.key_env: key 1 is not base64"),
        ({"mode": "mapped", "key_env": "PB_KEY", "http_timeout": 0}, "http_timeout"),
        ({"mode": "mapped", "key_env": "PB_KEY", "bogus": 1}, "accounts.bogus: unknown key"),
        ({"mode": "mixed"}, "accounts.mode: must be one of"),
    ],
)
def test_key_errors_name_file_and_key(
    table: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PB_KEY", generate_key())
    monkeypatch.setenv("PB_BAD", "!!!")
    with pytest.raises(ConfigError, match=message):
        parse(table)


def test_cli_needs_a_key_even_in_passthrough_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PB_KEY", generate_key())
    with pytest.raises(ConfigError, match="key_file"):
        parse({}, require_key=True)
    assert parse({"key_env": "PB_KEY"}, require_key=True).mode == "passthrough"


def test_readable_key_file_is_reported(key_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    key_file.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        parse({"mode": "mapped", "key_file": str(key_file)})
    assert "readable by others" in caplog.text


def test_presets_and_custom_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PB_KEY", generate_key())
    oauth2 = {
        "google": {"client_id": "g-id", "client_secret": "g-secret"},
        "microsoft": {"client_id": "m-id", "tenant": "contoso.example"},
        "work": {"preset": "microsoft", "client_id": "w-id"},
        "custom": {"client_id": "c", "token_url": "http://127.0.0.1:9/token", "scope": "mail"},
    }
    providers = parse({"mode": "mapped", "key_env": "PB_KEY", "oauth2": oauth2}).providers
    google, microsoft = providers["google"], providers["microsoft"]
    assert google.token_url == "https://oauth2.googleapis.com/token"
    assert google.authorize_url == "https://accounts.google.com/o/oauth2/v2/auth"
    assert google.device_url is None and google.scope == "https://mail.google.com/"
    assert google.authorize_params["access_type"] == "offline"
    assert "g-secret" not in repr(google)
    assert microsoft.token_url == (
        "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token"
    )
    assert microsoft.device_url is not None and microsoft.device_url.endswith("/devicecode")
    assert microsoft.scope == "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
    assert microsoft.refresh_with_scope and not google.refresh_with_scope
    assert "/common/" in providers["work"].token_url
    assert providers["custom"].authorize_url is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"client_id": "c"}, "accounts.oauth2.x.token_url: is required"),
        ({"client_id": "c", "token_url": "http://idp.example/token"}, "must be an https:// URL"),
        ({"token_url": "https://idp.example/token"}, "accounts.oauth2.x.client_id: is required"),
        ({"client_id": "c", "token_url": "https://i.example/t", "x": 1}, "x.x: unknown key"),
    ],
)
def test_provider_errors(
    table: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PB_KEY", generate_key())
    with pytest.raises(ConfigError, match=message):
        parse({"mode": "mapped", "key_env": "PB_KEY", "oauth2": {"x": table}})


def config(accounts: dict[str, Any], store: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    data = {
        "listeners": [{"port": 0}],
        "backend": {"type": "imap", "host": "127.0.0.1", "tls": "none"},
        "accounts": accounts,
        "store": store or {},
    }
    return parse_config(data, source="t.toml")


class DurableStore:
    """Any store but the in-memory one (whose accounts would vanish at exit)."""

    def __init__(self) -> None:
        memory = MemoryStore()
        self.uidls, self.locks, self.sizes = memory.uidls, memory.locks, memory.sizes
        self.accounts, self.listings = memory.accounts, memory.listings
        self.failures = memory.failures

    async def close(self) -> None:
        return None


def test_app_builds_the_mapped_authenticator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PB_KEY", generate_key())
    backend = load_backend("imap", {"host": "127.0.0.1", "tls": "none"}, source="t")
    passthrough = build_authenticator(config({}), backend, MemoryStore())
    assert isinstance(passthrough, PassthroughAuthenticator)
    mapped = config({"mode": "mapped", "key_env": "PB_KEY"}, {"type": "sqlite"})
    assert isinstance(build_authenticator(mapped, backend, DurableStore()), MappedAuthenticator)
    with pytest.raises(ConfigError, match="mapped accounts need a durable"):
        build_authenticator(config({"mode": "mapped", "key_env": "PB_KEY"}), backend, MemoryStore())


def test_the_deploy_example_is_a_valid_config(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "deploy" / "popbridge.mapped.example.toml"
    key, secret = tmp_path / "accounts.key", tmp_path / "google-secret"
    key.write_text(generate_key() + "\n")
    key.chmod(0o600)
    secret.write_text("g-secret\n")
    text = example.read_text().replace("/etc/popbridge/accounts.key", str(key))
    text = text.replace("/etc/popbridge/google-client-secret", str(secret))
    (tmp_path / "c.toml").write_text(text)
    loaded = load_config(tmp_path / "c.toml")
    settings = parse_accounts(loaded.accounts_settings, source=loaded.source)
    assert settings.mode == "mapped" and set(settings.providers) == {"google", "microsoft"}
    assert settings.providers["google"].client_secret == "g-secret"
