"""What the status page and the certificate gauges show, gathered from the running bridge.

Everything here is safe to show an operator: session ids, user names, client addresses,
states and counts, certificate subjects and expiry, mapped account names with their
upstream user and how their tokens stand. Never a password, a token or a sealed secret:
account records are read without the key, and only their non-secret fields are used.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from popbridge.accounts.authenticator import MappedAuthenticator
from popbridge.accounts.records import AccountRecord, BadRecord
from popbridge.config import Config
from popbridge.store import AccountRecords
from popbridge.telemetry import metrics

log = logging.getLogger(__name__)
MAX_ACCOUNTS_SHOWN = 500  # the page stays small however many accounts there are


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    listener: str
    subject: str
    not_after: float | None  # Unix time; None when the file did not load
    problem: str = ""

    def days_left(self, now: float) -> float | None:
        return None if self.not_after is None else (self.not_after - now) / 86400


@dataclass(frozen=True, slots=True)
class AccountInfo:
    name: str
    upstream_user: str
    mechanism: str
    token_health: str


def certificates(config: Config) -> list[CertificateInfo]:
    """Each TLS listener's certificate as its file is now; also sets the expiry gauges."""
    found = []
    for listener in config.listeners:
        if listener.tls is None:
            continue
        name = listener.name or "pop3"
        info = _certificate(name, listener.tls.cert_file)
        if info.not_after is not None:
            metrics.CERTIFICATE_EXPIRY.labels(name).set(info.not_after)
        found.append(info)
    return found


def _certificate(listener: str, path: Path) -> CertificateInfo:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as error:
        return CertificateInfo(listener, "", None, f"cannot load: {type(error).__name__}")
    subject = cert.subject.rfc4514_string()
    return CertificateInfo(listener, subject, cert.not_valid_after_utc.timestamp())


async def accounts(records: AccountRecords, authenticator: object) -> list[AccountInfo]:
    """The mapped accounts (the first `MAX_ACCOUNTS_SHOWN`), empty in passthrough mode."""
    if not isinstance(authenticator, MappedAuthenticator):
        return []
    shown = []
    for name in (await records.names())[:MAX_ACCOUNTS_SHOWN]:
        data = await records.get(name)
        if data is None:
            continue  # removed meanwhile
        try:
            record = AccountRecord.from_bytes(data)
        except BadRecord as error:
            shown.append(AccountInfo(name, "", "", f"unreadable record: {error}"))
            continue
        upstream = record.upstream
        if upstream.mechanism == "password":
            health = "password (no token)" if record.secret else "no secret stored"
        else:
            health = authenticator.tokens.health(record.name)
        shown.append(AccountInfo(record.name, upstream.user, upstream.mechanism, health))
    return shown


def now() -> float:
    return time.time()
