"""The sqlite store (not built yet: selecting it is a configuration error for now)."""

from __future__ import annotations

from popbridge.errors import ConfigError
from popbridge.store import Store


async def open_sqlite_store(location: object) -> Store:
    raise ConfigError("store.type: the sqlite store is not available in this version yet")
