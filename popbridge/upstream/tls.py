"""Upstream TLS: the verifying client context every backend uses, and the loopback test.

popbridge is a TLS-terminating proxy: whatever the device side speaks, the upstream side is
verified TLS (RFC 8314 section 4.1, RFC 6125 host names). Backends build their contexts
here, never in the downstream server's TLS module, so a backend depends only on the
contract side of the core. Cleartext upstreams are allowed only to this machine.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """A verifying client context for upstreams: system CAs plus `ca_file`, TLS 1.2+.

    Certificate chain and host name are always checked (RFC 6125); raises `ValueError`
    when `ca_file` cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (ssl.SSLError, OSError) as error:
            raise ValueError(f"cannot load CA certificates: {error}") from None
    # create_default_context already sets both; stated so no later edit can drop them.
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine (where cleartext upstreams are acceptable)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
