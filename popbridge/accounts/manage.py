"""Managing mapped accounts: add, list, remove, change the local password, re-seal under a new key.

This module owns the operations behind `popbridge accounts`, kept apart from argument parsing
so they can be used and tested directly, and the helpers the authenticator shares with
them: which backend settings an account gets (the default `[backend]` table with the
account's overrides on top), the key of the upstream mailbox it maps to, and storing a new
upstream secret in an existing record (after `rekey`, or when a provider rotates a refresh
token). Every change of a stored record is written only if the record is still the one
that was read (`AccountRecords.replace`), so concurrent updates never undo each other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from popbridge.accounts.crypto import Keyring
from popbridge.accounts.passwords import PasswordHasher
from popbridge.accounts.records import (
    AccountRecord,
    BadRecord,
    Upstream,
    canonical_name,
    open_secret,
    seal_record,
)
from popbridge.accounts.settings import AccountsSettings
from popbridge.contract import Backend, load_backend
from popbridge.errors import ConfigError
from popbridge.store import AccountRecords

BackendLoader = Callable[..., Backend]  # load_backend(name, settings, *, source=...)
UPDATE_ATTEMPTS = 10  # conditional writes of one record lost to other writers before giving up


class AccountError(Exception):
    """An account operation that cannot be done (the text says why)."""


@dataclass(frozen=True, slots=True)
class BackendDefaults:
    """The `[backend]` table every account starts from."""

    type: str
    settings: Mapping[str, Any]
    source: str


def backend_table(
    defaults: BackendDefaults, overrides: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The backend type and settings for an account: overrides on top of `[backend]`, or the
    overrides alone when they name another backend type (its keys would not fit)."""
    kind = str(overrides.get("type", defaults.type))
    if kind != defaults.type:
        return kind, {**overrides, "type": kind}
    return kind, {**defaults.settings, **overrides, "type": kind}


def settings_key(settings: Mapping[str, Any]) -> str:
    """A stable text for a settings table, to tell when an account's backend changed."""
    return json.dumps(settings, sort_keys=True, default=str)


def mailbox_key(defaults: BackendDefaults, upstream: Upstream) -> str:
    """What names the upstream mailbox an account maps to: its backend settings and its
    upstream user. Local users mapped to one mailbox share its maildrop lock (RFC 1939 §4);
    the settings are hashed, so no secret among them reaches a log or a key."""
    kind, table = backend_table(defaults, upstream.backend)
    digest = hashlib.sha256(settings_key(table).encode()).hexdigest()[:16]
    return f"upstream {kind} {digest} {upstream.user.casefold()}"


async def read_record(records: AccountRecords, name: str) -> tuple[bytes, AccountRecord]:
    """The stored bytes of `name`'s record and the record they hold."""
    raw = await records.get(name)
    if raw is None:
        raise AccountError(f"no account {name!r}")
    try:
        record = AccountRecord.from_bytes(raw)
    except BadRecord as exc:
        raise AccountError(f"account {name!r}: {exc}") from None
    if record.name != name:
        raise AccountError(f"the record stored as {name!r} names {record.name!r}")
    return raw, record


async def load_record(records: AccountRecords, name: str) -> AccountRecord:
    return (await read_record(records, name))[1]


async def update_record(
    records: AccountRecords, name: str, change: Callable[[AccountRecord], AccountRecord]
) -> AccountRecord:
    """Read, change and write `name`'s record, the write conditional on what was read: if
    another writer (a token rotation, `accounts passwd`, another instance) got in between,
    read its record and apply `change` to that, so neither update is silently undone."""
    for _attempt in range(UPDATE_ATTEMPTS):
        raw, record = await read_record(records, name)
        fresh = change(record)
        if await records.replace(name, raw, fresh.to_bytes()):
            return fresh
    raise AccountError(f"account {name!r} kept changing while it was updated; try again")


async def store_secret(records: AccountRecords, keyring: Keyring, name: str, secret: str) -> None:
    """Re-seal `name`'s record around a new upstream secret (same password, same upstream)."""

    def change(record: AccountRecord) -> AccountRecord:
        open_secret(record, keyring)  # only a record that opens is ours to rewrite
        return seal_record(name, record.password, record.upstream, secret, keyring)

    await update_record(records, name, change)


class AccountAdmin:
    """The `popbridge accounts` operations over one store."""

    def __init__(
        self,
        records: AccountRecords,
        settings: AccountsSettings,
        defaults: BackendDefaults,
        *,
        hasher: PasswordHasher | None = None,
        loader: BackendLoader = load_backend,
    ) -> None:
        self.records = records
        self.settings = settings
        self.keyring = settings.require_keyring()
        self.defaults = defaults
        self.hasher = hasher or PasswordHasher()
        self._loader = loader

    def validate(self, upstream: Upstream) -> None:
        """Refuse what could never log in: bad backend overrides, an unknown provider."""
        kind, table = backend_table(self.defaults, upstream.backend)
        self._loader(kind, table, source=f"{self.defaults.source} (account backend)")
        if upstream.oauth2 is not None and upstream.oauth2 not in self.settings.providers:
            raise ConfigError(
                f"{self.defaults.source}: accounts.oauth2.{upstream.oauth2}: no such provider table"
            )

    async def exists(self, name: str) -> bool:
        return await self.records.get(_name(name)) is not None

    async def add(
        self, name: str, password: str, upstream: Upstream, secret: str, *, replace: bool = False
    ) -> AccountRecord:
        name = _name(name)
        if not password or not secret:
            raise AccountError("the local password and the upstream secret must not be empty")
        if not replace and await self.exists(name):
            raise AccountError(f"account {name!r} exists (use --replace to overwrite it)")
        self.validate(upstream)
        record = seal_record(name, await self.hasher.hash(password), upstream, secret, self.keyring)
        if replace:
            await self.records.put(name, record.to_bytes())
        elif not await self.records.replace(name, None, record.to_bytes()):
            raise AccountError(f"account {name!r} exists (use --replace to overwrite it)")
        return record

    async def listing(self) -> list[AccountRecord | AccountError]:
        """Every record, or the reason it cannot be read; never opens a secret."""
        found: list[AccountRecord | AccountError] = []
        for name in await self.records.names():
            try:
                found.append(await load_record(self.records, name))
            except AccountError as exc:
                found.append(exc)
        return found

    async def remove(self, name: str) -> None:
        if not await self.records.delete(_name(name)):
            raise AccountError(f"no account {name!r}")

    async def passwd(self, name: str, password: str) -> None:
        """A new local password; the upstream secret is re-sealed (it is bound to the hash)."""
        name = _name(name)
        if not password:
            raise AccountError("the local password must not be empty")
        await load_record(self.records, name)  # an unknown account fails before the hashing
        hashed = await self.hasher.hash(password)

        def change(record: AccountRecord) -> AccountRecord:
            secret = open_secret(record, self.keyring)  # as stored now, if it was rotated
            return seal_record(name, hashed, record.upstream, secret, self.keyring)

        await update_record(self.records, name, change)

    async def rekey(self) -> tuple[int, int]:
        """Re-seal every secret under the first key; (re-sealed, already current)."""
        done = current = 0
        for name in await self.records.names():
            record = await load_record(self.records, name)
            if self.keyring.is_current(record.secret):
                current += 1
                continue
            await update_record(self.records, name, self._resealed)
            done += 1
        return done, current

    def _resealed(self, record: AccountRecord) -> AccountRecord:
        """The record with its own current secret sealed under the first key."""
        secret = open_secret(record, self.keyring)
        return seal_record(record.name, record.password, record.upstream, secret, self.keyring)


def _name(name: str) -> str:
    try:
        return canonical_name(name)
    except ValueError as exc:
        raise AccountError(str(exc)) from None
