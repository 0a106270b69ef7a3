"""Assembly: from a validated `Config` to the services a running bridge shares.

This module owns the start-up order: the backend from the registry, the store, then the
authenticator (passthrough, or mapped accounts backed by the store). `serve` and `check`
both go through it, so what `check` validates is what `serve` runs.
"""

from __future__ import annotations

from popbridge.accounts import BackendDefaults, MappedAuthenticator, parse_accounts
from popbridge.accounts.passthrough import Authenticator, PassthroughAuthenticator
from popbridge.config import Config
from popbridge.contract import Backend, check_disposition, load_backend
from popbridge.errors import ConfigError
from popbridge.pop3.sasl import ALL_MECHANISMS, PASSWORD_MECHANISMS
from popbridge.session.logingate import LoginGate
from popbridge.session.session import Services
from popbridge.session.throttle import Throttle
from popbridge.store import MemoryStore, Store, open_store


async def build_services(config: Config) -> tuple[Services, Store]:
    """The shared services, and the store the caller must close at shutdown."""
    backend = load_backend(config.backend_type, config.backend_settings, source=config.source)
    check_disposition(backend, config.maildrop.disposition)
    store = await open_store(config.store_settings, source=config.source, base=config.directory)
    try:
        authenticator = build_authenticator(config, backend, store)
    except BaseException:
        await store.close()
        raise
    # A mapped account's secret is stored upstream-side; a device's own bearer token
    # cannot be checked locally, so only the password mechanisms are offered then.
    mapped = isinstance(authenticator, MappedAuthenticator)
    services = Services(
        backend=backend, locks=store.locks, uidls=store.uidls, sizes=store.sizes,
        listings=store.listings,
        authenticator=authenticator,
        throttle=Throttle(config.server.throttle, ledger=store.failures),
        logins=LoginGate(
            config.server.max_logins_in_flight, floor=config.server.min_logins_in_flight
        ),
        sasl_mechanisms=PASSWORD_MECHANISMS if mapped else ALL_MECHANISMS,
    )  # fmt: skip
    return services, store


def build_authenticator(config: Config, backend: Backend, store: Store) -> Authenticator:
    """Passthrough, or mapped accounts from `store.accounts` (`[accounts] mode`)."""
    settings = parse_accounts(config.accounts_settings, source=config.source)
    if settings.mode == "passthrough":
        return PassthroughAuthenticator(backend)
    if isinstance(store, MemoryStore):
        # `popbridge accounts add` writes to the store; a memory store would always be empty
        raise ConfigError(
            f"{config.source}: accounts.mode: mapped accounts need a durable [store] "
            '(type = "sqlite" or "postgres")'
        )
    defaults = backend_defaults(config)
    return MappedAuthenticator(store.accounts, settings, backend, defaults)


def backend_defaults(config: Config) -> BackendDefaults:
    """The `[backend]` table a mapped account's overrides apply to."""
    return BackendDefaults(config.backend_type, config.backend_settings, config.source)
