"""The live sessions of one process, for the status page and the session gauges.

The server adds an entry when a connection is accepted and removes it when the connection
ends; an entry reads what it shows (state, TLS version, octets sent, the user once logged
in) from the objects that own it at the moment it is looked at, so no session has to report
anything as it goes. Adding and removing also keeps `popbridge_sessions_active` and
`popbridge_sessions_total` right.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from popbridge.telemetry.metrics import SESSIONS, SESSIONS_ACTIVE


class _Observed(Protocol):
    """What an entry reads: the frontend's `ClientConnection`."""

    @property
    def protocol(self) -> Any: ...  # its `engine.state` and `transport`

    @property
    def out(self) -> Any: ...  # its `sent` octets

    @property
    def session(self) -> Any: ...  # its `user`, once it has one


@dataclass(slots=True)
class SessionEntry:
    """One open connection as the status page shows it."""

    id: str
    client: str
    listener: str
    connection: _Observed
    started: float = field(default_factory=time.time)

    @property
    def user(self) -> str:
        return str(getattr(self.connection.session, "user", None) or "")

    @property
    def state(self) -> str:
        state = self.connection.protocol.engine.state
        return str(getattr(state, "name", state)).lower()

    @property
    def tls(self) -> str:
        transport = self.connection.protocol.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        return str(ssl_object.version()) if ssl_object is not None else "none"

    @property
    def sent(self) -> int:
        return int(getattr(self.connection.out, "sent", 0))

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.started)


class SessionBoard:
    """The open connections, by id."""

    def __init__(self) -> None:
        self._entries: dict[str, SessionEntry] = {}

    def add(self, entry: SessionEntry) -> SessionEntry:
        self._entries[entry.id] = entry
        SESSIONS_ACTIVE.labels(entry.listener).inc()
        return entry

    def remove(self, entry: SessionEntry) -> None:
        if self._entries.pop(entry.id, None) is not None:
            SESSIONS_ACTIVE.labels(entry.listener).dec()
            SESSIONS.labels(entry.listener, entry.tls).inc()

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[SessionEntry]:
        """A copy, oldest first: the page is rendered while sessions come and go."""
        return sorted(self._entries.values(), key=lambda entry: entry.started)
