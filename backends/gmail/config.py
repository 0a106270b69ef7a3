"""The Gmail backend's `[backend]` table: keys, defaults and the TLS context they imply.

This module owns the validation of the Gmail backend's configuration, read through
`TableReader` so a mistake names the file and the key and unknown keys are refused. `url` is
the API's origin (https://gmail.googleapis.com; `http://` only to this machine, for tests).
`label` names the maildrop: a system label id (INBOX) or a user label's name. `scope` says
which OAuth scope the accounts' tokens were granted: `full` (https://mail.google.com/, needed
for a permanent delete) or `modify` (gmail.modify: everything but a permanent delete).
`units_per_minute` and `max_in_flight` bound what one Gmail user costs (Gmail's per-user
limit is 15,000 quota units a minute); `max_backoff` bounds the time spent waiting out rate
limits within one call.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.http import checked_url
from popbridge.upstream.settings import TableReader
from popbridge.upstream.tls import client_context

FULL_SCOPE = "https://mail.google.com/"
MODIFY_SCOPE = "https://www.googleapis.com/auth/gmail.modify"
SCOPES = {"full": FULL_SCOPE, "modify": MODIFY_SCOPE}
DEFAULT_URL = "https://gmail.googleapis.com"
DEFAULT_MAX_JSON = 16 << 20  # a page of 500 ids is ~40 KB; history pages are smaller
USER_UNITS_PER_MINUTE = 15_000  # Gmail API usage limits, per user rate limit


@dataclass(frozen=True, slots=True)
class GmailSettings:
    """The validated `[backend]` table of a Gmail upstream."""

    url: str = DEFAULT_URL
    label: str = "INBOX"
    scope: str = "full"
    timeout: float = 30.0
    connect_timeout: float = 10.0
    max_backoff: float = 20.0
    fetch_chunk: int = 1 << 20
    page_size: int = 500
    max_in_flight: int = 8
    units_per_minute: int = USER_UNITS_PER_MINUTE
    max_json_size: int = DEFAULT_MAX_JSON
    ca_file: Path | None = None
    tls_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @property
    def api(self) -> str:
        """The base of every Gmail v1 user resource."""
        return f"{self.url}/gmail/v1/users/me"

    @property
    def scope_url(self) -> str:
        return SCOPES[self.scope]


def parse_settings(settings: Mapping[str, Any], *, source: str) -> GmailSettings:
    """Read and check the `[backend]` table; raises `ConfigError` naming file and key."""
    table = TableReader(settings, source=source, path="backend")
    table.string("type", "gmail")
    url = _url(table)
    label: str = table.string("label", "INBOX")
    if not label or any(ord(char) < 0x20 or ord(char) == 0x7F for char in label):
        raise table.error("label", "must be a non-empty name without control characters")
    if label.upper() in ("SPAM", "TRASH"):
        raise table.error("label", "Spam and Trash are never listed (includeSpamTrash is off)")
    ca_file = table.path("ca_file", None)
    parsed = GmailSettings(
        url=url,
        label=label,
        scope=table.choice("scope", tuple(SCOPES), "full"),
        timeout=table.number("timeout", 30.0, minimum=0.01),
        connect_timeout=table.number("connect_timeout", 10.0, minimum=0.01),
        max_backoff=table.number("max_backoff", 20.0, minimum=0.0),
        fetch_chunk=table.integer("fetch_chunk", 1 << 20, minimum=1024, maximum=64 << 20),
        # users.messages.list: maxResults is at most 500
        page_size=table.integer("page_size", 500, minimum=1, maximum=500),
        max_in_flight=table.integer("max_in_flight", 8, minimum=1, maximum=50),
        units_per_minute=table.integer(
            "units_per_minute", USER_UNITS_PER_MINUTE, minimum=100, maximum=1_200_000
        ),
        max_json_size=table.integer("max_json_size", DEFAULT_MAX_JSON, minimum=1 << 20),
        ca_file=ca_file,
        tls_context=_tls_context(table, ca_file),
    )
    table.finish()
    return parsed


def _url(table: TableReader) -> str:
    parts = checked_url(table, "url", table.string("url", DEFAULT_URL))
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise table.error("url", "must be the API's origin only")
    return f"{parts.scheme}://{parts.netloc}"


def _tls_context(table: TableReader, ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context: system CAs plus `ca_file`."""
    try:
        return client_context(ca_file)
    except ValueError as exc:
        raise table.error("ca_file", str(exc)) from None
