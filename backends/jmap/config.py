"""The JMAP backend's `[backend]` table: keys, defaults and the TLS context they imply.

This module owns the validation of the JMAP backend's configuration. Every key is read through
`TableReader`, so a mistake names the file and the key and unknown keys are refused. The
upstream is named either by `url` (its origin; the Session resource is then found at
`/.well-known/jmap`, RFC 8620 section 2.2) or by `session_url` directly; its scheme is
stored in lower case, and `http://` is refused unless the host is this machine, so
credentials never go in clear over a network. It also builds the one `ssl.SSLContext` the
backend uses: certificate and host name verification are always on (RFC 8620 section 8.2:
clients MUST validate TLS certificate chains); `ca_file` only adds a CA. `max_json_size`
bounds every JSON reply read. `max_measure_download` is still accepted but does nothing: a
never-seen Email on a server that ignores Range is downloaded whole to measure it, whatever
its size (`backends.jmap.sizes`), because a size two octets short is never told.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from backends.http import checked_url
from popbridge.upstream.settings import TableReader
from popbridge.upstream.tls import client_context

logger = logging.getLogger(__name__)

WELL_KNOWN = "/.well-known/jmap"
# Far above any listing page or Session object (a page of 1,024 Emails is about 300 KB).
DEFAULT_MAX_JSON = 64 << 20
MIN_MAX_JSON = 1 << 20


@dataclass(frozen=True, slots=True)
class JmapSettings:
    """The validated `[backend]` table of a JMAP upstream."""

    session_url: str
    mailbox: str | None
    timeout: float
    connect_timeout: float
    max_retry_after: float
    fetch_chunk: int
    page_size: int
    max_json_size: int = DEFAULT_MAX_JSON
    ca_file: Path | None = None
    tls_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @property
    def peer(self) -> str:
        """`scheme://host:port` of the Session resource, for log lines."""
        parts = urlsplit(self.session_url)
        return f"{parts.scheme}://{parts.netloc}"


def parse_settings(settings: Mapping[str, Any], *, source: str) -> JmapSettings:
    """Read and check the `[backend]` table; raises `ConfigError` naming file and key."""
    table = TableReader(settings, source=source, path="backend")
    table.string("type", "jmap")  # the core chose this backend by it; nothing more to check
    session_url = _session_url(table)
    ca_file = table.path("ca_file", None)
    mailbox: str | None = table.string("mailbox", None)
    if mailbox is not None and any(ord(char) < 0x20 or ord(char) == 0x7F for char in mailbox):
        raise table.error("mailbox", "must not contain control characters")
    parsed = JmapSettings(
        session_url=session_url,
        mailbox=mailbox,
        timeout=table.number("timeout", 30.0, minimum=0.01),
        connect_timeout=table.number("connect_timeout", 10.0, minimum=0.01),
        max_retry_after=table.number("max_retry_after", 5.0, minimum=0.0),
        fetch_chunk=table.integer("fetch_chunk", 1 << 20, minimum=1024, maximum=64 << 20),
        page_size=table.integer("page_size", 1024, minimum=1, maximum=100_000),
        max_json_size=table.integer("max_json_size", DEFAULT_MAX_JSON, minimum=MIN_MAX_JSON),
        ca_file=ca_file,
        tls_context=_tls_context(table, ca_file),
    )
    _obsolete_measure_limit(table)
    table.finish()
    return parsed


def _obsolete_measure_limit(table: TableReader) -> None:
    """Accept the old `max_measure_download` (a configuration that worked keeps working),
    and say it no longer limits anything: sizes are always measured exactly."""
    if "max_measure_download" in table:
        table.integer("max_measure_download", 0, minimum=0)
        notice = table.error(
            "max_measure_download",
            "obsolete and ignored: on a server that ignores Range every never-seen Email"
            " is downloaded whole for its exact size",
        )
        logger.warning("%s", notice)


def _session_url(table: TableReader) -> str:
    """`session_url` as given, or `url` + `/.well-known/jmap`; exactly one of them."""
    base: str | None = table.string("url", None)
    direct: str | None = table.string("session_url", None)
    if (base is None) == (direct is None):
        raise table.error("url", "give exactly one of url and session_url")
    key, value = ("url", base) if base is not None else ("session_url", direct)
    assert value is not None
    parts = checked_url(table, key, value)
    value = parts.scheme + value[len(parts.scheme) :]  # urlsplit gave it in lower case
    if base is not None:
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise table.error("url", "must be the server's origin only (use session_url)")
        return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN, "", ""))
    return value


def _tls_context(table: TableReader, ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context (RFC 8620 8.2): system CAs plus `ca_file`."""
    try:
        return client_context(ca_file)
    except ValueError as exc:
        raise table.error("ca_file", str(exc)) from None
