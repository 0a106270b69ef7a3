"""The bridge's durable state behind one interface: UID maps, locks, sizes, accounts, listings.

A `Store` bundles what must outlive a session: the UIDL of every message (RFC 1939
section 7 wants them stable for as long as the maildrop exists), the maildrop locks
(RFC 1939 section 4), exact sizes measured at RETR, mapped-account records, each
maildrop's last listing with its change token (`popbridge.store.listings`), and the
failed-login ledger (`popbridge.store.failures`). The in-memory store serves tests and
single runs; SQLite (`popbridge.store.sqlite`) is the default for one instance and
PostgreSQL (`popbridge.store.postgres`) lets several instances share state. `open_store`
picks one from `[store]`; the UID map's rules are shared by both SQL stores and live in
`popbridge.store.uidmap`.

May import `popbridge.contract`, `popbridge.errors` and `popbridge.upstream`; asyncpg only
in the PostgreSQL modules, and nothing of the frontend, the session or a backend.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any, Protocol

from popbridge.errors import BridgeError, Code, ConfigError
from popbridge.store.failures import FailureLedger, MemoryFailures
from popbridge.store.listings import ListingMemories, MemoryListings
from popbridge.store.locks import LocalLocks, MaildropLocks
from popbridge.store.sizes import MemorySizeCache, SizeCache
from popbridge.store.uidl import DerivedUidls, UidlMap
from popbridge.upstream.settings import TableReader

STORE_TYPES = ("sqlite", "postgres", "memory")
DEFAULT_SQLITE_PATH = "popbridge-state.sqlite3"


class StoreUnavailable(BridgeError):
    """The store did not answer in time or failed; the session cannot go on (RFC 3206 4)."""

    code = Code.SYS_TEMP
    wire_text = "maildrop state temporarily unavailable"


class AccountRecords(Protocol):
    """Opaque mapped-account records by local user name (the accounts module owns the format)."""

    async def get(self, name: str) -> bytes | None: ...

    async def put(self, name: str, record: bytes) -> None: ...

    async def replace(self, name: str, expected: bytes | None, record: bytes) -> bool:
        """Write `record` only if the stored one is still `expected` (None: no record yet);
        False, writing nothing, when another writer changed it since it was read."""
        ...

    async def delete(self, name: str) -> bool: ...

    async def names(self) -> list[str]: ...


class Store(Protocol):
    @property
    def uidls(self) -> UidlMap: ...

    @property
    def locks(self) -> MaildropLocks: ...

    @property
    def sizes(self) -> SizeCache: ...

    @property
    def accounts(self) -> AccountRecords: ...

    @property
    def listings(self) -> ListingMemories: ...

    @property
    def failures(self) -> FailureLedger: ...

    async def close(self) -> None: ...


class MemoryAccountRecords:
    def __init__(self) -> None:
        self._records: dict[str, bytes] = {}

    async def get(self, name: str) -> bytes | None:
        return self._records.get(name)

    async def put(self, name: str, record: bytes) -> None:
        self._records[name] = record

    async def replace(self, name: str, expected: bytes | None, record: bytes) -> bool:
        if self._records.get(name) != expected:
            return False
        self._records[name] = record
        return True

    async def delete(self, name: str) -> bool:
        return self._records.pop(name, None) is not None

    async def names(self) -> list[str]:
        return sorted(self._records)


class MemoryStore:
    """State held in this process only: lost at exit (UIDLs stay derived, so stable)."""

    def __init__(self) -> None:
        self.uidls: UidlMap = DerivedUidls()
        self.locks: MaildropLocks = LocalLocks()
        self.sizes: SizeCache = MemorySizeCache()
        self.accounts: AccountRecords = MemoryAccountRecords()
        self.listings: ListingMemories = MemoryListings()
        self.failures: FailureLedger = MemoryFailures()

    async def close(self) -> None:
        return None


async def open_store(settings: Mapping[str, Any], *, source: str, base: Path) -> Store:
    """Open the store `[store]` describes; relative paths are relative to `base`."""
    reader = TableReader(settings, source=source, path="store")
    kind = reader.choice("type", STORE_TYPES, "sqlite")
    if kind == "memory":
        reader.finish()
        return MemoryStore()
    if kind == "sqlite":
        from popbridge.store.sqlite import open_sqlite_store

        path = _anchored(reader.string("path", DEFAULT_SQLITE_PATH), base)
        reader.finish()
        return await _named(source, open_sqlite_store(path))
    dsn = reader.secret("dsn")
    if dsn is None:
        raise reader.error("dsn", 'is required for type = "postgres" (or dsn_env / dsn_file)')
    pool_size = reader.integer("pool_size", 5, minimum=1, maximum=100)
    reader.finish()
    try:
        from popbridge.store.postgres import open_postgres_store
    except ImportError:
        raise reader.error(
            "type", "postgres needs asyncpg: pip install 'popbridge[postgres]'"
        ) from None
    return await _named(source, open_postgres_store(dsn, pool_size=pool_size))


async def _named(source: str, opening: Awaitable[Store]) -> Store:
    """Open a store; its `ConfigError` (which names the key) also names the file."""
    try:
        return await opening
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def _anchored(value: str, base: Path) -> Path:
    """`value` with `~` expanded, relative to `base` unless absolute."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
