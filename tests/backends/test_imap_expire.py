"""What the IMAP backend lets popbridge announce as EXPIRE (RFC 2449 §6.7)."""

from __future__ import annotations

import pytest

from backends.imap.backend import ImapBackend
from backends.imap.config import parse_settings
from popbridge.contract import expire_policy


@pytest.mark.parametrize(
    ("window", "expire"),
    [({}, "NEVER"), ({"window_days": 14}, "14"), ({"window_newest": 500}, None)],
)
def test_expire_follows_the_window(window: dict[str, int], expire: str | None) -> None:
    settings = {"host": "127.0.0.1", "port": 143, "tls": "none", **window}
    backend = ImapBackend(parse_settings(settings, source="test"))
    assert expire_policy(backend) == expire
