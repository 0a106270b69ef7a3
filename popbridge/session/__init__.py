"""One POP3 session's meaning: login, the transaction (snapshot, retrieval, lookahead), UPDATE.

The engine says what the client asked; the session decides the answer and is the only
place that calls a backend, through the contract (`popbridge.contract`). May import
`popbridge.pop3`, `popbridge.contract`, `popbridge.errors`, `popbridge.store`,
`popbridge.accounts` (the authenticator seam), `popbridge.session.throttle`'s policy
types and `popbridge.telemetry` (metrics); never a backend, aioimaplib, aiohttp, ssl or socket.
"""

from __future__ import annotations

from popbridge.session.session import (
    PLAINTEXT_REFUSED,
    Output,
    Services,
    Session,
    SessionClosing,
    SessionPolicy,
)

__all__ = ["PLAINTEXT_REFUSED", "Output", "Services", "Session", "SessionClosing", "SessionPolicy"]
