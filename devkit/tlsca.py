"""Throw-away test PKI: one CA and one ``localhost`` server certificate signed by it.

This module owns the certificates every TLS test uses. A real CA plus a leaf (rather than one
self-signed certificate) is what strict verifiers accept: Python's ``create_default_context``
(X509_STRICT on newer versions wants AKI/SKI and critical basicConstraints), GnuTLS in mpop and
OpenSSL in curl and fetchmail. The leaf carries ``DNS:localhost`` and ``IP:127.0.0.1`` because
fetchmail ignores IP SANs while the other clients connect to 127.0.0.1 directly.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Short-lived on purpose; the backdating tolerates small clock skew between processes.
_VALIDITY = dt.timedelta(days=30)
_BACKDATE = dt.timedelta(hours=1)


@dataclass(frozen=True)
class TestPki:
    """Paths of the PEM files written by :func:`make_test_pki`."""

    __test__: ClassVar[bool] = False  # not a pytest test class despite the name

    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "popbridge test"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    # A CA only signs certificates; an ECDSA server key only signs the TLS handshake.
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_name("popbridge throw-away test CA"))
        .issuer_name(_name("popbridge throw-away test CA"))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: dt.datetime,
) -> x509.Certificate:
    public = key.public_key()
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def make_test_pki(directory: Path) -> TestPki:
    """Write ``ca.pem``, ``cert.pem`` and ``key.pem`` into ``directory`` (created if missing).

    Keys are ECDSA P-256: every client and server in the test matrix supports it, and it is
    generated in microseconds where RSA takes tens of milliseconds.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, now)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf_certificate(key, ca_key, ca_cert, now)
    pki = TestPki(
        ca_file=directory / "ca.pem",
        cert_file=directory / "cert.pem",
        key_file=directory / "key.pem",
    )
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pki.key_file.write_bytes(key_pem)
    pki.key_file.chmod(0o600)  # Dovecot reads it as root or as its owner; nobody else needs it
    return pki
