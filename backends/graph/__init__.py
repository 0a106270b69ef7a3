"""The Microsoft Graph backend: a POP3 maildrop backed by one Outlook mail folder.

This package owns everything Graph: `create` (the `popbridge.backends` entry point named
`graph`) reads the `[backend]` table and returns a `GraphBackend`. The modules inside split
the work: `config` (settings), `transport` (the only user of aiohttp: deadlines, throttling,
errors), `folders` (folders by well-known name or path), `listing` (paging with a confirmed
snapshot), `spool` (CRLF normalisation, exact counts, the on-disk spool of what was counted),
`mailbox` (listing with sizes, streaming), `batch` (`$batch`), `dispose` (the writes at QUIT)
and `backend` (login and `check`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backends.graph.backend import GraphBackend
from backends.graph.config import GraphSettings, parse_settings
from popbridge.contract import Backend

__all__ = ["GraphBackend", "GraphSettings", "create"]


def create(settings: Mapping[str, Any], *, source: str) -> Backend:
    """Build the Graph backend from its `[backend]` table; ConfigError names file and key."""
    return GraphBackend(parse_settings(settings, source=source))
