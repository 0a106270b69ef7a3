"""The IMAP backend's `[backend]` table: keys, defaults and the TLS context they imply.

This module owns the validation of the IMAP backend's configuration: every key is read
through `TableReader`, so a mistake names the file and the key, and unknown keys are
refused. It also builds the one `ssl.SSLContext` the backend uses: certificate and hostname
verification are always on (conformance S-8); `ca_file` only adds a trusted CA.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.imap import wire
from popbridge.settings import TableReader

logger = logging.getLogger(__name__)

TLS_MODES = ("implicit", "starttls", "none")
AUTH_MODES = ("auto", "plain", "login")


@dataclass(frozen=True, slots=True)
class ImapSettings:
    """The validated `[backend]` table of an IMAP upstream."""

    host: str
    port: int
    tls: str
    folder: str
    timeout: float
    connect_timeout: float
    fetch_chunk: int
    auth: str
    ca_file: Path | None = None
    tls_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @property
    def peer(self) -> str:
        """`host:port` for log lines."""
        return f"{self.host}:{self.port}"

    @property
    def folder_argument(self) -> str:
        """The folder as a quoted, modified-UTF-7 mailbox name (RFC 3501 5.1.3, 9)."""
        return wire.quote(wire.encode_mailbox(self.folder))


def parse_settings(settings: Mapping[str, Any], *, source: str) -> ImapSettings:
    """Read and check the `[backend]` table; raises `ConfigError` naming file and key."""
    table = TableReader(settings, source=source, path="backend")
    table.string("type", "imap")  # the core chose this backend by it; nothing more to check
    host: str = table.string("host")
    tls = table.choice("tls", TLS_MODES, "implicit")
    port = table.integer("port", 993 if tls == "implicit" else 143, minimum=1, maximum=65535)
    ca_file = table.path("ca_file", None)
    folder: str = table.string("folder", "INBOX")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in folder):
        raise table.error("folder", "must not contain control characters")
    parsed = ImapSettings(
        host=host,
        port=port,
        tls=tls,
        folder=folder,
        timeout=table.number("timeout", 30.0, minimum=0.01),
        connect_timeout=table.number("connect_timeout", 10.0, minimum=0.01),
        fetch_chunk=table.integer("fetch_chunk", 1 << 20, minimum=1024, maximum=64 << 20),
        auth=table.choice("auth", AUTH_MODES, "auto"),
        ca_file=ca_file,
        tls_context=None if tls == "none" else _tls_context(table, ca_file),
    )
    table.finish()
    if tls == "none" and not _is_loopback(host):
        logger.warning(
            "%s: backend.tls = none sends IMAP passwords in clear to %s, which is not loopback",
            source,
            host,
        )
    return parsed


def _tls_context(table: TableReader, ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context: system CAs plus `ca_file` (RFC 2595 2.4, RFC 6125)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (ssl.SSLError, OSError) as exc:
            raise table.error("ca_file", f"cannot load CA certificates: {exc}") from None
    # create_default_context already sets both; stated so no later edit can drop them.
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
