"""The bridge's configuration: a TOML file loaded once into frozen dataclasses.

Every table is read through `TableReader`, so a mistake is reported with the file and the
key, unknown keys are refused, and defaults are the safe ones: no plaintext passwords on
an unencrypted connection, the RFC 1939 §3 idle timeout of ten minutes and one minute from
connect to login, deletions by UID EXPUNGE only. The `[backend]` table is handed, unread,
to the backend named by its `type`, which validates it itself; the core never knows a
backend's keys.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from popbridge.contract import Disposition, DispositionKind
from popbridge.environment import apply_environment
from popbridge.errors import ConfigError
from popbridge.frontend.proxy import IPNetwork, networks
from popbridge.frontend.tls import PROFILES, VERSIONS, TlsSettings
from popbridge.session.logingate import LOGINS_FLOOR, LOGINS_IN_FLIGHT
from popbridge.session.throttle import ThrottlePolicy
from popbridge.telemetry.logs import FORMATS as LOG_FORMATS
from popbridge.upstream.settings import TableReader

MIN_IDLE_TIMEOUT = 600.0  # RFC 1939 section 3: an autologout timer of at least 10 minutes
LOGIN_TIMEOUT = 60.0  # from connect to a successful login; no command extends it
_DISPOSITIONS = tuple(kind.value for kind in DispositionKind)
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_SASL = ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER")


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One listening socket.

    `mode` "plain" offers STLS when `tls` is set; "implicit" is POP3S (TLS from the first
    byte, RFC 8314). `plaintext_auth` opts in to passwords on an unencrypted connection.
    """

    host: str = "127.0.0.1"
    port: int = 110
    mode: str = "plain"
    tls: TlsSettings | None = None
    plaintext_auth: bool = False
    handshake_timeout: float = 30.0
    sasl_mechanisms: tuple[str, ...] | None = None  # None: all the authenticator accepts
    name: str = ""  # the label metrics and the status page use; "" shows as "pop3"
    # A PROXY protocol header (v1 or v2) first on every connection, only from these peers
    proxy_protocol: bool = False
    proxy_trusted: tuple[IPNetwork, ...] = ()

    def describe(self) -> str:
        tls = "no TLS" if self.tls is None else f"TLS profile {self.tls.describe()}"
        kind = "POP3S" if self.mode == "implicit" else ("POP3+STLS" if self.tls else "POP3")
        auth = "plaintext passwords allowed" if self.plaintext_auth else "plaintext refused"
        via = ""
        if self.proxy_protocol:
            via = ", PROXY protocol from " + " ".join(str(n) for n in self.proxy_trusted)
        return f"{self.host}:{self.port} {kind}, {tls}, {auth}{via}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    idle_timeout: float = MIN_IDLE_TIMEOUT
    login_timeout: float = LOGIN_TIMEOUT
    max_connections: int = 1000
    listen_backlog: int = 1024
    max_logins_in_flight: int = LOGINS_IN_FLIGHT
    min_logins_in_flight: int = LOGINS_FLOOR
    max_auth_failures: int = 3
    shutdown_grace: float = 30.0
    log_level: str = "INFO"
    log_format: str = "text"
    certificate_check_interval: float = 60.0
    throttle: ThrottlePolicy = field(default_factory=ThrottlePolicy)


@dataclass(frozen=True, slots=True)
class MaildropConfig:
    disposition: Disposition = field(default_factory=lambda: Disposition(DispositionKind.EXPUNGE))
    mark_seen_on_retr: bool = False


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The operators' HTTP listener (`popbridge.admin`): off unless enabled, loopback only
    unless a bearer token protects it (or the operator says the network is trusted)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9110
    token: str | None = field(default=None, repr=False)
    probe_interval: float = 15.0  # seconds between upstream and store probes
    ready_max_age: float = 60.0  # the upstream must have answered a probe this recently
    probe_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    listeners: tuple[ListenerConfig, ...]
    backend_type: str
    backend_settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    server: ServerConfig = ServerConfig()
    maildrop: MaildropConfig = MaildropConfig()
    admin: AdminConfig = AdminConfig()
    # read by their owners (popbridge.store, popbridge.accounts), which validate them
    store_settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    accounts_settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def directory(self) -> Path:
        """Where relative paths in the config are anchored: the config file's folder."""
        return Path(self.source).resolve().parent


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read `path`, apply `POPBRIDGE_...` overrides from `environ` (default: the process
    environment, see `popbridge.environment`) and validate; `ConfigError` names file and key."""
    source = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{source}: cannot read: {error.strerror}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from error
    data = apply_environment(data, os.environ if environ is None else environ)
    return parse_config(data, source=source)


def parse_config(data: Mapping[str, Any], *, source: str) -> Config:
    """Validate an already parsed TOML document."""
    unknown = sorted(
        set(data) - {"server", "listeners", "backend", "maildrop", "store", "accounts", "admin"}
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
        admin=_admin(TableReader(data.get("admin", {}), source=source, path="admin")),
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
        listeners.append(_listener(reader, f"pop3-{index}"))
        reader.finish()
    return tuple(listeners)


def _listener(reader: TableReader, default_name: str) -> ListenerConfig:
    mode = reader.choice("mode", ("plain", "implicit"), "plain")
    tls = _tls(reader)
    if mode == "implicit" and tls is None:
        raise reader.error("cert_file", 'is required for mode = "implicit"')
    mechanisms = reader.list_of_strings("sasl_mechanisms", None)
    unknown = set(mechanisms or ()) - set(_SASL)
    if unknown:
        raise reader.error("sasl_mechanisms", f"unknown mechanism {sorted(unknown)[0]!r}")
    return ListenerConfig(
        host=reader.string("host", "127.0.0.1"),
        port=reader.integer("port", 995 if mode == "implicit" else 110, minimum=0, maximum=65535),
        mode=mode,
        tls=tls,
        plaintext_auth=reader.boolean("plaintext_auth", False),
        handshake_timeout=reader.number("handshake_timeout", 30.0, minimum=1.0),
        sasl_mechanisms=None if mechanisms is None else tuple(m.upper() for m in mechanisms),
        name=_label(reader, default_name),
        **_proxy(reader),
    )


def _label(reader: TableReader, default: str) -> str:
    """A listener's name is a metric label value: short, and safe in any exposition."""
    name: str = reader.string("name", default)
    if not (
        0 < len(name) <= 32 and all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in name)
    ):
        raise reader.error("name", "must be 1-32 letters, digits, '-', '_' or '.'")
    return name


def _proxy(reader: TableReader) -> dict[str, Any]:
    """`proxy_protocol` needs `proxy_trusted`: a header is believed only from those peers."""
    enabled = reader.boolean("proxy_protocol", False)
    cidrs = reader.list_of_strings("proxy_trusted", [])
    if enabled and not cidrs:
        raise reader.error("proxy_trusted", "is required with proxy_protocol = true")
    if cidrs and not enabled:
        raise reader.error("proxy_trusted", "has no effect without proxy_protocol = true")
    try:
        trusted = networks(cidrs)
    except ValueError as error:
        raise reader.error("proxy_trusted", str(error)) from None
    return {"proxy_protocol": enabled, "proxy_trusted": trusted}


def _tls(reader: TableReader) -> TlsSettings | None:
    cert, key = reader.path("cert_file", None), reader.path("key_file", None)
    profile = reader.choice("tls_profile", PROFILES, "modern")
    min_version = reader.choice("tls_min_version", tuple(VERSIONS), "TLSv1.2")
    ciphers = reader.string("tls_ciphers", None)
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise reader.error(
            "key_file" if key is None else "cert_file", "cert_file and key_file go together"
        )
    if profile != "custom" and (ciphers is not None or "tls_min_version" in reader):
        raise reader.error(
            "tls_profile", 'tls_min_version and tls_ciphers need tls_profile = "custom"'
        )
    return TlsSettings(cert, key, profile, min_version, ciphers)


def _server(reader: TableReader) -> ServerConfig:
    config = ServerConfig(
        idle_timeout=reader.number("idle_timeout", MIN_IDLE_TIMEOUT, minimum=MIN_IDLE_TIMEOUT),
        login_timeout=reader.number("login_timeout", LOGIN_TIMEOUT, minimum=1.0),
        max_connections=reader.integer("max_connections", 1000, minimum=1),
        listen_backlog=reader.integer("listen_backlog", 1024, minimum=1, maximum=65535),
        max_logins_in_flight=reader.integer(
            "max_logins_in_flight", LOGINS_IN_FLIGHT, minimum=1, maximum=10_000
        ),
        min_logins_in_flight=reader.integer(
            "min_logins_in_flight", LOGINS_FLOOR, minimum=1, maximum=10_000
        ),
        max_auth_failures=reader.integer("max_auth_failures", 3, minimum=1),
        shutdown_grace=reader.number("shutdown_grace", 30.0),
        log_level=reader.choice("log_level", _LOG_LEVELS, "INFO"),
        log_format=reader.choice("log_format", LOG_FORMATS, "text"),
        certificate_check_interval=reader.number("certificate_check_interval", 60.0),
        throttle=ThrottlePolicy(
            base_delay=reader.number("auth_failure_delay", 2.0),
            max_delay=reader.number("auth_failure_max_delay", 30.0),
            window=reader.number("lockout_window", 900.0, minimum=1.0),
            max_failures_per_address=reader.integer("max_failures_per_address", 20, minimum=1),
            max_failures_per_user=reader.integer("max_failures_per_user", 10, minimum=1),
            max_connections_per_address=reader.integer(
                "max_connections_per_address", 50, minimum=1
            ),
            login_delay=reader.integer("login_delay", 0, minimum=0),
            ipv4_prefix=reader.integer("ipv4_prefix_length", 32, minimum=8, maximum=32),
            ipv6_prefix=reader.integer("ipv6_prefix_length", 64, minimum=16, maximum=128),
        ),
    )
    if config.min_logins_in_flight > config.max_logins_in_flight:
        if "min_logins_in_flight" in reader:  # said so: a contradiction worth an error
            raise reader.error(
                "min_logins_in_flight",
                f"must not exceed max_logins_in_flight ({config.max_logins_in_flight})",
            )
        config = replace(config, min_logins_in_flight=config.max_logins_in_flight)
    reader.finish()
    return config


def _admin(reader: TableReader) -> AdminConfig:
    config = AdminConfig(
        enabled=reader.boolean("enabled", False),
        host=reader.string("host", "127.0.0.1"),
        port=reader.integer("port", 9110, minimum=0, maximum=65535),
        token=reader.secret("token"),
        probe_interval=reader.number("probe_interval", 15.0, minimum=1.0),
        ready_max_age=reader.number("ready_max_age", 60.0, minimum=1.0),
        probe_timeout=reader.number("probe_timeout", 10.0, minimum=1.0),
    )
    # The status page names users and their addresses: off loopback, only behind a token.
    if config.token is None and not _loopback(config.host):
        if not reader.boolean("allow_unauthenticated", False):
            raise reader.error(
                "host",
                "a non-loopback admin listener needs a token "
                "(token_file or token_env), or allow_unauthenticated = true",
            )
    else:
        reader.boolean("allow_unauthenticated", False)
    if config.token is not None and not 16 <= len(config.token) <= 512:
        raise reader.error("token", "must have 16 to 512 characters")
    reader.finish()
    return config


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


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
