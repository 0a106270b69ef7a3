"""In-process bridges over the JMAP backend, for the backend tests that need a POP3 client.

This module owns one context manager: a bridge on a free loopback port in front of a JMAP
upstream (the real Cyrus or `devkit.fake_jmap`), passthrough logins, plaintext allowed on
loopback, no pause after a failed login; it yields the port and stops the bridge after.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from backends.jmap import create
from devkit.servers import Servers
from popbridge.config import Config, ListenerConfig, MaildropConfig, ServerConfig
from popbridge.session.throttle import ThrottlePolicy


@contextlib.asynccontextmanager
async def jmap_bridge(url: str, maildrop: MaildropConfig | None = None) -> AsyncIterator[int]:
    """A bridge to the JMAP server at `url` (its origin); yields the POP3 port."""
    settings: dict[str, Any] = {"type": "jmap", "url": url, "timeout": 10}
    config = Config(
        source="test",
        backend_type="jmap",
        backend_settings=settings,
        listeners=(ListenerConfig(host="127.0.0.1", port=0, plaintext_auth=True),),
        server=ServerConfig(throttle=ThrottlePolicy(base_delay=0)),
        maildrop=maildrop or MaildropConfig(),
    )
    servers = Servers()
    try:
        bridge = await servers.start(config, create(settings, source="test"))
        ((_, port),) = bridge.addresses
        yield port
    finally:
        await servers.stop()
