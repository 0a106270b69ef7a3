"""The JMAP backend: a POP3 maildrop backed by one Mailbox of a JMAP account (RFC 8620/8621).

This package owns everything JMAP: `create` (the `popbridge.backends` entry point named
`jmap`) reads the `[backend]` table and returns a `JmapBackend`. The modules inside split the
work: `config` (settings and TLS context), `sockets` (the TCP options that avoid delayed-ACK
stalls), `transport` (the only user of aiohttp: the connection pool, deadlines, retries,
HTTP errors), `discovery` (the Session resource and URL templates), `api` (method calls and
their errors), `folders` (Mailboxes by role or name), `listing` (Email/query paging and the
stable order), `mailbox` (listing and streaming, read-only), `dispose` (the writes at QUIT)
and `backend` (login and `check`).

From the core it imports only `popbridge.contract`, `popbridge.errors` and
`popbridge.upstream` (tests/test_layout.py checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backends.jmap.backend import JmapBackend
from backends.jmap.config import JmapSettings, parse_settings
from popbridge.contract import Backend

__all__ = ["JmapBackend", "JmapSettings", "create"]


def create(settings: Mapping[str, Any], *, source: str) -> Backend:
    """Build the JMAP backend from its `[backend]` table; ConfigError names file and key."""
    return JmapBackend(parse_settings(settings, source=source))
