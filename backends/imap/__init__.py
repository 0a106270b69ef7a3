"""The IMAP backend: a POP3 maildrop backed by one folder of a live IMAP mailbox.

This package owns everything IMAP: `create` (the `popbridge.backends` entry point named
`imap`) reads the `[backend]` table and returns an `ImapBackend`. The modules inside split
the work: `config` (settings and TLS context), `wire` (IMAP syntax, no I/O), `connection`
(the only user of aioimaplib: deadlines, TLS, login), `mailbox` (read-only listing and
streaming), `dispose` (the writes at QUIT) and `backend` (session setup and `check`).

From the core it imports only `popbridge.contract`, `popbridge.errors` and
`popbridge.upstream` (tests/test_layout.py checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backends.imap.backend import ImapBackend
from backends.imap.config import ImapSettings, parse_settings
from popbridge.contract import Backend

__all__ = ["ImapBackend", "ImapSettings", "create"]


def create(settings: Mapping[str, Any], *, source: str) -> Backend:
    """Build the IMAP backend from its `[backend]` table; ConfigError names file and key."""
    return ImapBackend(parse_settings(settings, source=source))
