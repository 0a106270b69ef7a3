"""Mapped accounts: local POP3 users whose mail is an upstream account the bridge logs in to.

This package owns the second credentials mode (the first is passthrough): a device logs in
with a local user name and a local password, hashed with scrypt; the bridge maps it to an
upstream account and logs in there with a secret the device never sees, a password or an
OAuth2 refresh token, sealed with AES-256-GCM under an operator key. `settings` reads
`[accounts]`, `crypto` is the key ring, `records` the stored format, `manage` the operations
behind `popbridge accounts`, and `authenticator` the `Authenticator` the sessions use.

May import `popbridge.contract`, `popbridge.errors`, `popbridge.store`, `popbridge.oauth2`
and `popbridge.upstream`; never the frontend, the session or a backend.
"""

from __future__ import annotations

from popbridge.accounts.authenticator import MappedAuthenticator
from popbridge.accounts.crypto import Keyring, Unsealable, generate_key
from popbridge.accounts.manage import AccountAdmin, AccountError, BackendDefaults
from popbridge.accounts.records import AccountRecord, Upstream, canonical_name
from popbridge.accounts.settings import ACCOUNT_MODES, AccountsSettings, parse_accounts

__all__ = [
    "ACCOUNT_MODES",
    "AccountAdmin",
    "AccountError",
    "AccountRecord",
    "AccountsSettings",
    "BackendDefaults",
    "Keyring",
    "MappedAuthenticator",
    "Unsealable",
    "Upstream",
    "canonical_name",
    "generate_key",
    "parse_accounts",
]
