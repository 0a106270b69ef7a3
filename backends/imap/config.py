"""The IMAP backend's `[backend]` table: keys, defaults and the TLS context they imply.

This module owns the validation of the IMAP backend's configuration: every key is read
through `TableReader`, so a mistake names the file and the key, and unknown keys are
refused. It also builds the one `ssl.SSLContext` the backend uses: certificate and hostname
verification are always on (conformance S-8); `ca_file` only adds a trusted CA. `folder`
or `folders` (several folders merged into one maildrop) and the optional window
(`window_newest`, `window_days`) are checked here too, and so is `max_literal_size`, the
largest literal or response line accepted from the server (more than the largest piece the
backend ever asks for, so only a broken or hostile server reaches it).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.imap import wire
from backends.imap.folders import canonical, tag_of
from popbridge.upstream.settings import TableReader
from popbridge.upstream.tls import client_context, is_loopback

logger = logging.getLogger(__name__)

TLS_MODES = ("implicit", "starttls", "none")
# Four times the largest `fetch_chunk`: a literal is at most one piece or one whole message
# no larger than `fetch_chunk`, a header block, or a SEARCH line of millions of UIDs.
DEFAULT_MAX_LITERAL = 256 << 20
MIN_MAX_LITERAL = 64 << 10
AUTH_MODES = ("auto", "plain", "login")


@dataclass(frozen=True, slots=True)
class ImapSettings:
    """The validated `[backend]` table of an IMAP upstream."""

    host: str
    port: int
    tls: str
    folder: str
    timeout: float
    connect_timeout: float
    fetch_chunk: int
    auth: str
    ca_file: Path | None = None
    tls_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    folders: tuple[str, ...] = ()  # several folders merged; empty: `folder` alone
    window_newest: int | None = None
    window_days: int | None = None
    max_literal_size: int = DEFAULT_MAX_LITERAL
    send_client_address: bool = False  # ID x-originating-ip before login (RFC 2971)
    warm_connections: int = 0  # greeted, unauthenticated connections kept while logins overlap

    @property
    def maildrop_folders(self) -> tuple[str, ...]:
        """The folders POP3 clients see as one maildrop, in configured order."""
        return self.folders or (self.folder,)

    @property
    def peer(self) -> str:
        """`host:port` for log lines."""
        return f"{self.host}:{self.port}"

    @property
    def folder_argument(self) -> str:
        """The folder as a quoted, modified-UTF-7 mailbox name (RFC 3501 5.1.3, 9)."""
        return wire.quote(wire.encode_mailbox(self.folder))


def parse_settings(settings: Mapping[str, Any], *, source: str) -> ImapSettings:
    """Read and check the `[backend]` table; raises `ConfigError` naming file and key."""
    # `folders` is read from `settings` directly (TableReader has no array reader).
    rest = {key: value for key, value in settings.items() if key != "folders"}
    table = TableReader(rest, source=source, path="backend")
    table.string("type", "imap")  # the core chose this backend by it; nothing more to check
    host: str = table.string("host")
    tls = table.choice("tls", TLS_MODES, "implicit")
    port = table.integer("port", 993 if tls == "implicit" else 143, minimum=1, maximum=65535)
    ca_file = table.path("ca_file", None)
    folders = _folders(table, settings)
    fetch_chunk = table.integer("fetch_chunk", 1 << 20, minimum=1024, maximum=64 << 20)
    parsed = ImapSettings(
        host=host,
        port=port,
        tls=tls,
        folder=folders[0],
        folders=folders if len(folders) > 1 else (),
        window_newest=_window(table, settings, "window_newest"),
        window_days=_window(table, settings, "window_days"),
        timeout=table.number("timeout", 30.0, minimum=0.01),
        connect_timeout=table.number("connect_timeout", 10.0, minimum=0.01),
        fetch_chunk=fetch_chunk,
        max_literal_size=_max_literal(table, fetch_chunk),
        auth=table.choice("auth", AUTH_MODES, "auto"),
        send_client_address=table.boolean("send_client_address", False),
        warm_connections=table.integer("warm_connections", 0, minimum=0, maximum=256),
        ca_file=ca_file,
        tls_context=None if tls == "none" else _tls_context(table, ca_file),
    )
    table.finish()
    if tls == "none" and not is_loopback(host):
        logger.warning(
            "%s: backend.tls = none sends IMAP passwords in clear to %s, which is not loopback",
            source,
            host,
        )
    return parsed


def _folders(table: TableReader, settings: Mapping[str, Any]) -> tuple[str, ...]:
    """`folder` (one) or `folders` (merged into one maildrop), never both."""
    if "folders" not in settings:
        folder: str = table.string("folder", "INBOX")
        _check_folder(table, "folder", folder)
        return (folder,)
    if "folder" in settings:
        raise table.error("folders", "give either folder or folders, not both")
    value = settings["folders"]
    if not isinstance(value, list) or not value or not all(isinstance(f, str) for f in value):
        raise table.error("folders", "must be a non-empty array of folder names")
    for name in value:
        _check_folder(table, "folders", name)
    names = [canonical(name) for name in value]
    if len(set(names)) != len(names):
        raise table.error("folders", "names a folder twice")
    if len({tag_of(name) for name in names}) != len(names):  # 2**-32: but never silently
        raise table.error("folders", "two folder names hash alike; rename one")
    return tuple(value)


def _check_folder(table: TableReader, key: str, name: str) -> None:
    if not name:
        raise table.error(key, "a folder name must not be empty")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise table.error(key, "must not contain control characters")


def _max_literal(table: TableReader, fetch_chunk: int) -> int:
    """The bound on what one literal or line may hold; at least one `fetch_chunk`."""
    bound: int = table.integer("max_literal_size", DEFAULT_MAX_LITERAL, minimum=MIN_MAX_LITERAL)
    if bound < fetch_chunk:
        raise table.error("max_literal_size", "must be at least fetch_chunk")
    return bound


def _window(table: TableReader, settings: Mapping[str, Any], key: str) -> int | None:
    """An optional positive integer (absent: no limit)."""
    if key not in settings:
        return None
    return table.integer(key, minimum=1)


def _tls_context(table: TableReader, ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context (RFC 2595 2.4): system CAs plus `ca_file`."""
    try:
        return client_context(ca_file)
    except ValueError as exc:
        raise table.error("ca_file", str(exc)) from None
