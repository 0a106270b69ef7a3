"""The Gmail backend: a POP3 maildrop backed by one label of a Gmail account (Gmail API v1).

This package owns everything Gmail: `create` (the `popbridge.backends` entry point named
`gmail`) reads the `[backend]` table and returns a `GmailBackend`. The modules inside split
the work: `config` (settings and TLS context), `quota` (the per-user unit budget and
requests in flight), `transport` (the only user of aiohttp: deadlines, retries, errors),
`rawstream` (format=raw decoded as it arrives), `labels` (label names and ids), `listing`
(the read calls), `sync` (full and history-based listings with measured sizes), `mailbox`
(listing and streaming, read-only), `dispose` (the writes at QUIT) and `backend` (login and
`check`).

From the core it imports only `popbridge.contract`, `popbridge.errors` and
`popbridge.upstream` (tests/test_layout.py checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backends.gmail.backend import GmailBackend
from backends.gmail.config import GmailSettings, parse_settings
from popbridge.contract import Backend

__all__ = ["GmailBackend", "GmailSettings", "create"]


def create(settings: Mapping[str, Any], *, source: str) -> Backend:
    """Build the Gmail backend from its `[backend]` table; ConfigError names file and key."""
    return GmailBackend(parse_settings(settings, source=source))
