"""The store's schema as ordered migrations, one SQL text per dialect and version.

This module owns the schema of both SQL stores. Migration N brings a database from version
N-1 to N; each store applies the missing ones at start, all in one transaction that holds
the database's write lock (so two instances starting together migrate once), and records
them in `schema_version` (one row per applied version). A database whose version is newer
than this list is refused: an older popbridge must not write to a schema it does not know.
Migrations are only ever appended, never edited. Tables: `store_meta` (the store's random
epoch), `uidls` (the live UID map: account, identity -> UIDL with the message's fingerprint
and when it was last listed), `uidl_tombstones` (UIDLs that must never be handed out again,
RFC 1939 section 7), `sizes` (octets measured at RETR), `accounts` (opaque mapped-account
records), `listings` (each account's last listing and change token, one compact row per
mailbox, see `popbridge.store.listings`) and, in PostgreSQL, `login_failures` (the shared
failed-login ledger).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


SCHEMA_VERSION_SQLITE: Final = (
    "CREATE TABLE IF NOT EXISTS schema_version "
    "(version INTEGER PRIMARY KEY, applied INTEGER NOT NULL)"
)
SCHEMA_VERSION_POSTGRES: Final = (
    "CREATE TABLE IF NOT EXISTS schema_version "
    "(version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())"
)

MIGRATIONS: Final = (
    Migration(
        1,
        "UID map, tombstones, measured sizes, account records",
        sqlite=(
            "CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE uidls (account TEXT NOT NULL, identity TEXT NOT NULL,"
            " uidl TEXT NOT NULL, mark TEXT, size INTEGER, last_seen INTEGER NOT NULL,"
            " PRIMARY KEY (account, identity), UNIQUE (account, uidl))",
            "CREATE TABLE uidl_tombstones (account TEXT NOT NULL, uidl TEXT NOT NULL,"
            " identity TEXT, mark TEXT, size INTEGER, last_seen INTEGER NOT NULL,"
            " PRIMARY KEY (account, uidl))",
            "CREATE TABLE sizes (account TEXT NOT NULL, identity TEXT NOT NULL,"
            " size INTEGER NOT NULL, PRIMARY KEY (account, identity))",
            "CREATE TABLE accounts (name TEXT PRIMARY KEY, record BLOB NOT NULL,"
            " updated INTEGER NOT NULL)",
        ),
        postgres=(
            "CREATE TABLE store_meta (key text PRIMARY KEY, value text NOT NULL)",
            "CREATE TABLE uidls (account text NOT NULL, identity text NOT NULL,"
            " uidl text NOT NULL, mark text, size bigint, last_seen bigint NOT NULL,"
            " PRIMARY KEY (account, identity), UNIQUE (account, uidl))",
            "CREATE TABLE uidl_tombstones (account text NOT NULL, uidl text NOT NULL,"
            " identity text, mark text, size bigint, last_seen bigint NOT NULL,"
            " PRIMARY KEY (account, uidl))",
            "CREATE TABLE sizes (account text NOT NULL, identity text NOT NULL,"
            " size bigint NOT NULL, PRIMARY KEY (account, identity))",
            "CREATE TABLE accounts (name text PRIMARY KEY, record bytea NOT NULL,"
            " updated bigint NOT NULL)",
        ),
    ),
    Migration(
        2,
        "last listing and change token per account",
        sqlite=(
            "CREATE TABLE listings (account TEXT PRIMARY KEY, state BLOB NOT NULL,"
            " updated INTEGER NOT NULL)",
        ),
        postgres=(
            "CREATE TABLE listings (account text PRIMARY KEY, state bytea NOT NULL,"
            " updated bigint NOT NULL)",
        ),
    ),
    Migration(
        3,
        "failed-login ledger shared by instances (PostgreSQL only: SQLite serves one)",
        sqlite=(),
        postgres=(
            "CREATE TABLE login_failures (key text NOT NULL, ticket text NOT NULL,"
            " pending boolean NOT NULL, at timestamptz NOT NULL,"
            " PRIMARY KEY (ticket, key))",
            "CREATE INDEX login_failures_key ON login_failures (key, at)",
        ),
    ),
    Migration(
        4,
        "summary of the UID map's last plan per account (popbridge.store.uidsummary)",
        sqlite=(
            "CREATE TABLE uidl_summaries (account TEXT PRIMARY KEY, digest TEXT NOT NULL,"
            " uidls TEXT NOT NULL, planned INTEGER NOT NULL)",
        ),
        postgres=(
            "CREATE TABLE uidl_summaries (account text PRIMARY KEY, digest text NOT NULL,"
            " uidls text NOT NULL, planned bigint NOT NULL)",
        ),
    ),
)


def pending(current: int) -> tuple[Migration, ...]:
    """The migrations a database at version `current` still needs, in order."""
    if current > len(MIGRATIONS):
        raise SchemaTooNew(current)
    return MIGRATIONS[current:]


class SchemaTooNew(Exception):
    """The database was written by a newer popbridge."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"schema version {version} is newer than this popbridge knows ({len(MIGRATIONS)})"
        )
        self.version = version
