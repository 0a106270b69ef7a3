"""Downstream TLS: server contexts per listener, legacy profiles, and reloading certificates.

Each TLS listener has a profile: `modern` (TLS 1.2 or newer, OpenSSL's default ciphers; RFC
8314 section 4.1), `legacy` (TLS 1.0 and 1.1 and the old ciphers that scan-to-mail printers
and old phones need, chosen explicitly by the operator and logged as a warning), or
`custom` (a minimum version and cipher string). A `CertificateSet` builds the context from
the certificate and key files and rebuilds it when the files change or on SIGHUP; each new
connection takes the current context, so a reload never drops a session, and a broken new
certificate keeps the old one in service. `make_self_signed` writes a certificate for the
quick start.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from popbridge.errors import ConfigError

log = logging.getLogger(__name__)

PROFILES = ("modern", "legacy", "custom")
VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
# OpenSSL 3 refuses TLS 1.0/1.1 and SHA-1 signatures above security level 0, which also
# lets in anonymous suites (aNULL: no server authentication, open to a man in the middle,
# RFC 5246 §A.5) and unencrypted ones (eNULL, RFC 7525 §4.1): both go.
LEGACY_CIPHERS = "ALL:!aNULL:!eNULL:@SECLEVEL=0"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """One listener's certificate, key and protocol policy."""

    cert_file: Path
    key_file: Path
    profile: str = "modern"
    min_version: str = "TLSv1.2"
    ciphers: str | None = None

    def describe(self) -> str:
        if self.profile == "custom":
            return f"custom (minimum {self.min_version}, ciphers {self.ciphers or 'default'})"
        return self.profile


def build_context(settings: TlsSettings) -> ssl.SSLContext:
    """A server context for `settings`; raises `ConfigError` if the files do not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_NO_COMPRESSION  # CRIME
    if settings.profile == "legacy":
        with warnings.catch_warnings():  # deliberate: the operator chose the legacy profile
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
        context.set_ciphers(LEGACY_CIPHERS)
    elif settings.profile == "custom":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = VERSIONS[settings.min_version]
        if settings.ciphers:
            context.set_ciphers(settings.ciphers)
    else:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"cannot load certificate {settings.cert_file}: {error}") from error
    return context


def _fingerprint(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    """What changes when a file is rewritten or a Kubernetes secret symlink is swapped."""
    result = []
    for path in paths:
        try:
            info = os.stat(path)  # follows symlinks: ..data swaps change the target
            result.append((info.st_ino, info.st_mtime_ns, info.st_size))
        except OSError:
            result.append((0, 0, 0))
    return tuple(result)


class CertificateSet:
    """The current context of one listener, rebuilt when its files change."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self._files = (settings.cert_file, settings.key_file)
        self._seen = _fingerprint(self._files)
        self.context = build_context(settings)
        if settings.profile == "legacy":
            log.warning(
                "TLS profile 'legacy' for %s: TLS 1.0/1.1 and weak ciphers are accepted",
                settings.cert_file,
            )

    def reload(self, *, force: bool = False) -> bool:
        """Rebuild from the files if they changed (always with `force`); True if replaced."""
        seen = _fingerprint(self._files)
        if not force and seen == self._seen:
            return False
        self._seen = seen
        try:
            self.context = build_context(self.settings)
        except ConfigError as error:
            log.error("certificate reload failed, keeping the previous one: %s", error)
            return False
        log.info("certificate reloaded from %s", self.settings.cert_file)
        return True


def make_self_signed(cert_file: Path, key_file: Path, hosts: list[str], *, days: int = 825) -> None:
    """Write a self-signed server certificate (ECDSA P-256) for `hosts` (names or IPs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_bytes)
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
