"""The mapped-account record: versioned JSON with a sealed upstream secret, as the store keeps it.

This module owns the record format behind `Store.accounts` (opaque bytes by local user name):
a canonical JSON object with a format version `v`, the canonical local `name`, the local
password hash (`popbridge.accounts.passwords`), the `upstream` mapping (user, mechanism, backend
overrides, OAuth2 provider) and `secret`, the upstream password or OAuth2 refresh token sealed
by the key ring with every other field as associated data. Reading a record never needs the
key (`accounts list` works without it); only opening the secret does.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from popbridge.accounts.crypto import Keyring
from popbridge.accounts.passwords import check_hash

VERSION = 1
MECHANISMS = ("password", "oauth2")
MAX_NAME_CHARS = 255


class BadRecord(ValueError):
    """A stored record is not one this version can read."""


def canonical_name(name: str) -> str:
    """The key a local user is stored and locked under: NFC, case-folded (RFC 1939 leaves
    user names to the server; devices disagree on case). ValueError for unusable names."""
    folded = unicodedata.normalize("NFC", name).casefold()
    if not folded or len(folded) > MAX_NAME_CHARS:
        raise ValueError("a local user name must have 1 to 255 characters")
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in folded):
        raise ValueError("a local user name must not contain spaces or control characters")
    return folded


def canonical_json(value: Any) -> bytes:
    """One byte string per value: the record's storage form and its associated data."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a local user's mail really is: the upstream login and backend overrides."""

    user: str
    mechanism: str = "password"
    backend: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    oauth2: str | None = None  # the [accounts.oauth2.NAME] provider, for mechanism "oauth2"

    def __post_init__(self) -> None:
        if not self.user:
            raise ValueError("the upstream user must not be empty")
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"unknown mechanism {self.mechanism!r}")
        if (self.mechanism == "oauth2") != (self.oauth2 is not None):
            raise ValueError("an OAuth2 provider goes with mechanism oauth2, and only with it")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"user": self.user, "mechanism": self.mechanism}
        data["backend"] = dict(self.backend)
        if self.oauth2 is not None:
            data["oauth2"] = self.oauth2
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Upstream:
        backend = data.get("backend", {})
        if not isinstance(backend, Mapping):
            raise BadRecord("upstream.backend must be an object")
        return cls(
            user=str(data["user"]),
            mechanism=str(data.get("mechanism", "password")),
            backend=MappingProxyType(dict(backend)),
            oauth2=None if data.get("oauth2") is None else str(data["oauth2"]),
        )


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """One local user; `secret` is sealed, and opens only with this record's other fields."""

    name: str
    password: Mapping[str, Any] = field(repr=False)
    upstream: Upstream
    secret: Mapping[str, str] = field(repr=False)
    updated: str = ""

    def header(self) -> dict[str, Any]:
        """Every field but the secret: what the secret is bound to."""
        return {
            "v": VERSION, "name": self.name, "password": dict(self.password),
            "upstream": self.upstream.to_json(), "updated": self.updated,
        }  # fmt: skip

    def to_bytes(self) -> bytes:
        return canonical_json({**self.header(), "secret": dict(self.secret)})

    @classmethod
    def from_bytes(cls, data: bytes) -> AccountRecord:
        """Parse a stored record; raises `BadRecord` if this version cannot read it."""
        try:
            obj = json.loads(data)
            if not isinstance(obj, dict):
                raise BadRecord("not a JSON object")
            if obj.get("v") != VERSION:
                raise BadRecord(f"record format version {obj.get('v')!r}, this reads {VERSION}")
            check_hash(obj["password"])
            return cls(
                name=str(obj["name"]),
                password=MappingProxyType(dict(obj["password"])),
                upstream=Upstream.from_json(obj["upstream"]),
                secret=MappingProxyType({k: str(v) for k, v in dict(obj["secret"]).items()}),
                updated=str(obj.get("updated", "")),
            )
        except BadRecord:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadRecord(f"unreadable account record: {exc.__class__.__name__}") from None


def seal_record(
    name: str,
    password: Mapping[str, Any],
    upstream: Upstream,
    secret: str,
    keyring: Keyring,
) -> AccountRecord:
    """A new record with `secret` sealed under the key ring's first key."""
    updated = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    unsealed = AccountRecord(name, MappingProxyType(dict(password)), upstream, {}, updated)
    sealed = keyring.seal(secret.encode("utf-8"), canonical_json(unsealed.header()))
    return AccountRecord(name, unsealed.password, upstream, MappingProxyType(sealed), updated)


def open_secret(record: AccountRecord, keyring: Keyring) -> str:
    """The upstream secret; raises `Unsealable` if the key is missing or the record altered."""
    return keyring.open(record.secret, canonical_json(record.header())).decode("utf-8")
