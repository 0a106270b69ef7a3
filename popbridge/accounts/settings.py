"""The `[accounts]` table: the mode, the key ring for mapped accounts, and OAuth2 providers.

This module owns the validation of `[accounts]`. In `mode = "mapped"` a key is required and
must come from `key_file` (one key per line, the first one current) or `key_env` (keys
separated by spaces or commas), never inline in the config, which tends to be world-readable
and copied around. A key file that others can read is reported. Each `[accounts.oauth2.NAME]`
table describes one OAuth2 provider (`popbridge.oauth2.providers`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from popbridge.accounts.crypto import BadKey, Keyring
from popbridge.errors import ConfigError
from popbridge.oauth2.providers import Provider, parse_provider
from popbridge.upstream.settings import TableReader

logger = logging.getLogger(__name__)

ACCOUNT_MODES = ("passthrough", "mapped")


@dataclass(frozen=True, slots=True)
class AccountsSettings:
    """The validated `[accounts]` table."""

    mode: str = "passthrough"
    keyring: Keyring | None = field(default=None, repr=False)
    providers: Mapping[str, Provider] = field(default_factory=lambda: MappingProxyType({}))
    http_timeout: float = 15.0
    refresh_margin: float = 120.0

    def require_keyring(self) -> Keyring:
        if self.keyring is None:
            raise ConfigError("accounts: mapped accounts need key_file or key_env")
        return self.keyring


def parse_accounts(
    table: Mapping[str, Any], *, source: str, require_key: bool = False
) -> AccountsSettings:
    """Read `[accounts]`; with `require_key` (the accounts CLI) a key is needed in any mode."""
    reader = TableReader(table, source=source, path="accounts")
    mode = reader.choice("mode", ACCOUNT_MODES, "passthrough")
    if mode == "passthrough" and not require_key:
        reader.finish()
        return AccountsSettings()
    keyring = _keyring(reader)
    settings = AccountsSettings(
        mode=mode,
        keyring=keyring,
        providers=MappingProxyType(_providers(reader, table, source)),
        http_timeout=reader.number("http_timeout", 15.0, minimum=0.1),
        refresh_margin=reader.number("refresh_margin", 120.0),
    )
    reader.finish()
    return settings


def _keyring(reader: TableReader) -> Keyring:
    if reader.string("key", None) is not None:
        raise reader.error("key", "keep the key out of the config: use key_file or key_env")
    path: Path | None = reader.path("key_file", None)
    variable: str | None = reader.string("key_env", None)
    if (path is None) == (variable is None):
        raise reader.error("key_file", "give exactly one of key_file, key_env (a key: "
                           "openssl rand -base64 32)")  # fmt: skip
    where = "key_file" if path is not None else "key_env"
    if path is not None:
        _warn_if_readable(path)
        text = "\n".join(
            line for line in path.read_text(encoding="utf-8").splitlines()
            if not line.lstrip().startswith("#")
        )  # fmt: skip
    else:
        assert variable is not None
        if variable not in os.environ:
            raise reader.error("key_env", f"environment variable {variable} is not set")
        text = os.environ[variable]
    try:
        return Keyring.parse(text)
    except BadKey as exc:
        raise reader.error(where, str(exc)) from None


def _warn_if_readable(path: Path) -> None:
    if path.stat().st_mode & 0o077:
        logger.warning("%s: the accounts key file is readable by others (chmod 600 it)", path)


def _providers(reader: TableReader, table: Mapping[str, Any], source: str) -> dict[str, Provider]:
    reader.table("oauth2")  # checks that it is a table, and marks the key as read
    providers = {}
    for name, value in dict(table.get("oauth2", {})).items():
        sub = TableReader(value, source=source, path=f"accounts.oauth2.{name}")
        providers[name] = parse_provider(sub, name)
    return providers
