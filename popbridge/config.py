"""The bridge's configuration: a TOML file loaded once into frozen dataclasses.

Every table is read through `TableReader`, so a mistake is reported with the file and the
key, unknown keys are refused, and defaults are the safe ones: no plaintext passwords on
an unencrypted connection, the RFC 1939 section 3 idle timeout of ten minutes, deletions
by UID EXPUNGE only. The `[backend]` table is handed, unread, to the backend named by its
`type`, which validates it itself; the core never knows a backend's keys.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from popbridge.errors import ConfigError
from popbridge.maildrop import Disposition, DispositionKind
from popbridge.settings import TableReader

MIN_IDLE_TIMEOUT = 600.0  # RFC 1939 section 3: an autologout timer of at least 10 minutes
_DISPOSITIONS = tuple(kind.value for kind in DispositionKind)
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One listening socket. `plaintext_auth` opts in to passwords without TLS."""

    host: str = "127.0.0.1"
    port: int = 110
    plaintext_auth: bool = False


@dataclass(frozen=True, slots=True)
class ServerConfig:
    idle_timeout: float = MIN_IDLE_TIMEOUT
    max_connections: int = 1000
    auth_failure_delay: float = 2.0
    max_auth_failures: int = 3
    shutdown_grace: float = 30.0
    log_level: str = "INFO"


@dataclass(frozen=True, slots=True)
class MaildropConfig:
    disposition: Disposition = field(default_factory=lambda: Disposition(DispositionKind.EXPUNGE))
    mark_seen_on_retr: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    listeners: tuple[ListenerConfig, ...]
    backend_type: str
    backend_settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    server: ServerConfig = ServerConfig()
    maildrop: MaildropConfig = MaildropConfig()
    # read by their owners (popbridge.store, popbridge.accounts), which validate them
    store_settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    accounts_settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def directory(self) -> Path:
        """Where relative paths in the config are anchored: the config file's folder."""
        return Path(self.source).resolve().parent


def load_config(path: Path) -> Config:
    """Read and validate `path`; raises `ConfigError` naming the file and key."""
    source = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{source}: cannot read: {error.strerror}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from error
    return parse_config(data, source=source)


def parse_config(data: Mapping[str, Any], *, source: str) -> Config:
    """Validate an already parsed TOML document."""
    unknown = sorted(
        set(data) - {"server", "listeners", "backend", "maildrop", "store", "accounts"}
    )
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: unknown section")
    backend = data.get("backend")
    if not isinstance(backend, Mapping):
        raise ConfigError(f"{source}: backend: a [backend] table is required")
    backend_type = TableReader(backend, source=source, path="backend").string("type")
    return Config(
        source=source,
        listeners=_listeners(data.get("listeners"), source),
        backend_type=backend_type,
        backend_settings=MappingProxyType(dict(backend)),
        server=_server(TableReader(data.get("server", {}), source=source, path="server")),
        maildrop=_maildrop(TableReader(data.get("maildrop", {}), source=source, path="maildrop")),
        store_settings=MappingProxyType(dict(_table(data, "store", source))),
        accounts_settings=MappingProxyType(dict(_table(data, "accounts", source))),
    )


def _table(data: Mapping[str, Any], name: str, source: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {name}: must be a table")
    return value


def _listeners(value: Any, source: str) -> tuple[ListenerConfig, ...]:
    if value is None:
        raise ConfigError(f"{source}: listeners: at least one [[listeners]] entry is required")
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{source}: listeners: must be a non-empty array of tables")
    listeners = []
    for index, table in enumerate(value):
        reader = TableReader(table, source=source, path=f"listeners[{index}]")
        listeners.append(
            ListenerConfig(
                host=reader.string("host", "127.0.0.1"),
                port=reader.integer("port", 110, minimum=0, maximum=65535),
                plaintext_auth=reader.boolean("plaintext_auth", False),
            )
        )
        reader.finish()
    return tuple(listeners)


def _server(reader: TableReader) -> ServerConfig:
    config = ServerConfig(
        idle_timeout=reader.number("idle_timeout", MIN_IDLE_TIMEOUT, minimum=MIN_IDLE_TIMEOUT),
        max_connections=reader.integer("max_connections", 1000, minimum=1),
        auth_failure_delay=reader.number("auth_failure_delay", 2.0),
        max_auth_failures=reader.integer("max_auth_failures", 3, minimum=1),
        shutdown_grace=reader.number("shutdown_grace", 30.0),
        log_level=reader.choice("log_level", _LOG_LEVELS, "INFO"),
    )
    reader.finish()
    return config


def _maildrop(reader: TableReader) -> MaildropConfig:
    kind = DispositionKind(reader.choice("disposition", _DISPOSITIONS, "expunge"))
    folder = reader.string("move_to", None)
    keyword = reader.string("keyword", "$POP3Deleted")
    if kind is DispositionKind.MOVE and folder is None:
        raise reader.error("move_to", 'is required when disposition = "move"')
    if not _is_imap_atom(keyword):
        raise reader.error("keyword", "must be 1-64 printable ASCII characters, no specials")
    config = MaildropConfig(
        disposition=Disposition(kind, folder=folder, keyword=keyword),
        mark_seen_on_retr=reader.boolean("mark_seen_on_retr", False),
    )
    reader.finish()
    return config


def _is_imap_atom(keyword: str) -> bool:
    """A flag keyword must be an IMAP atom (RFC 3501 section 9) and a JMAP keyword."""
    specials = set('(){ %*"\\]')
    return (
        0 < len(keyword) <= 64
        and keyword.isascii()
        and all(0x21 <= ord(ch) <= 0x7E and ch not in specials for ch in keyword)
    )
