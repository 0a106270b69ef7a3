"""The postgres store (not built yet: selecting it is a configuration error for now)."""

from __future__ import annotations

from popbridge.errors import ConfigError
from popbridge.store import Store


async def open_postgres_store(location: object) -> Store:
    raise ConfigError("store.type: the postgres store is not available in this version yet")
