"""The Microsoft Graph backend's `[backend]` table: keys, defaults and the TLS context.

This module owns the validation of the Graph backend's configuration. Every key is read
through `TableReader`, so a mistake names the file and the key and unknown keys are refused.
`url` is the Graph service root with its version (`https://graph.microsoft.com/v1.0`; a
national cloud or a test server otherwise). Certificate and host name verification are
always on; `ca_file` only adds a CA. `max_in_flight` is capped at 4: Outlook allows an
application four concurrent requests per mailbox and answers more with 429. The optional
window (`window_newest`, `window_days`) bounds what a login shows, and so what it measures.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backends.http import checked_url
from popbridge.upstream.settings import TableReader
from popbridge.upstream.tls import client_context, is_loopback

logger = logging.getLogger(__name__)

DEFAULT_URL = "https://graph.microsoft.com/v1.0"
MAX_IN_FLIGHT = 4  # Outlook's MailboxConcurrency limit per application and mailbox


@dataclass(frozen=True, slots=True)
class GraphSettings:
    """The validated `[backend]` table of a Microsoft Graph upstream."""

    url: str
    folder: str
    timeout: float
    connect_timeout: float
    max_retry_after: float
    fetch_chunk: int
    page_size: int
    max_in_flight: int
    spool_dir: Path
    spool_limit: int
    window_newest: int | None = None  # show only the newest N messages
    window_days: int | None = None  # show only messages received in the last D days
    ca_file: Path | None = None
    tls_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @property
    def peer(self) -> str:
        """`scheme://host:port` of the service root, for log lines."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"


def parse_settings(settings: Mapping[str, Any], *, source: str) -> GraphSettings:
    """Read and check the `[backend]` table; raises `ConfigError` naming file and key."""
    table = TableReader(settings, source=source, path="backend")
    table.string("type", "graph")  # the core chose this backend by it
    url = _service_root(table)
    folder: str = table.string("folder", "inbox")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in folder):
        raise table.error("folder", "must not contain control characters")
    ca_file = table.path("ca_file", None)
    spool_dir = table.path("spool_dir", tempfile.gettempdir())
    assert spool_dir is not None
    parsed = GraphSettings(
        url=url,
        folder=folder.strip("/"),
        timeout=table.number("timeout", 30.0, minimum=0.01),
        connect_timeout=table.number("connect_timeout", 10.0, minimum=0.01),
        max_retry_after=table.number("max_retry_after", 10.0, minimum=0.0),
        fetch_chunk=table.integer("fetch_chunk", 1 << 20, minimum=1024, maximum=64 << 20),
        page_size=table.integer("page_size", 500, minimum=1, maximum=1000),
        max_in_flight=table.integer("max_in_flight", MAX_IN_FLIGHT, minimum=1, maximum=4),
        spool_dir=spool_dir,
        spool_limit=table.integer("spool_limit", 256 << 20, minimum=0),
        window_newest=_window(table, settings, "window_newest"),
        window_days=_window(table, settings, "window_days"),
        ca_file=ca_file,
        tls_context=_tls_context(table, ca_file),
    )
    table.finish()
    host = urlsplit(url).hostname or ""
    if url.startswith("http:") and not is_loopback(host):
        logger.warning("%s: backend url is http://, so tokens go in clear to %s", source, host)
    return parsed


def _service_root(table: TableReader) -> str:
    value: str = table.string("url", DEFAULT_URL)
    parts = checked_url(table, "url", value, cleartext_to_loopback_only=False)  # warned below
    if parts.query or parts.fragment:
        raise table.error("url", "must be the service root, without query or fragment")
    return value.rstrip("/")


def _window(table: TableReader, settings: Mapping[str, Any], key: str) -> int | None:
    """An optional positive integer (absent: no limit)."""
    return table.integer(key, minimum=1) if key in settings else None


def _tls_context(table: TableReader, ca_file: Path | None) -> ssl.SSLContext:
    try:
        return client_context(ca_file)
    except ValueError as exc:
        raise table.error("ca_file", str(exc)) from None
