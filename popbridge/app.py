"""Assembly: from a validated `Config` to the services a running bridge shares.

This module owns the start-up order: the backend from the registry, the store, then the
authenticator (passthrough, or mapped accounts backed by the store). `serve` and `check`
both go through it, so what `check` validates is what `serve` runs.
"""

from __future__ import annotations

from popbridge.auth import Authenticator, PassthroughAuthenticator
from popbridge.config import Config
from popbridge.errors import ConfigError
from popbridge.maildrop import Backend, load_backend
from popbridge.session import Services
from popbridge.settings import TableReader
from popbridge.store import Store, open_store

ACCOUNT_MODES = ("passthrough", "mapped")


async def build_services(config: Config) -> tuple[Services, Store]:
    """The shared services, and the store the caller must close at shutdown."""
    backend = load_backend(config.backend_type, config.backend_settings, source=config.source)
    store = await open_store(config.store_settings, source=config.source, base=config.directory)
    try:
        authenticator = build_authenticator(config, backend, store)
    except BaseException:
        await store.close()
        raise
    services = Services(
        backend=backend, locks=store.locks, uidls=store.uidls, sizes=store.sizes,
        authenticator=authenticator,
    )  # fmt: skip
    return services, store


def build_authenticator(config: Config, backend: Backend, store: Store) -> Authenticator:
    reader = TableReader(config.accounts_settings, source=config.source, path="accounts")
    mode = reader.choice("mode", ACCOUNT_MODES, "passthrough")
    if mode == "passthrough":
        reader.finish()
        return PassthroughAuthenticator(backend)
    raise ConfigError(f"{config.source}: accounts.mode: mapped accounts are not available yet")
