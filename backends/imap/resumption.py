"""TLS session resumption towards the IMAP upstream (RFC 8446 section 2.2, RFC 5077).

Every mailbox opens its own upstream connection, so a storm of logins costs the upstream and
us one full TLS handshake each: a certificate sent, signed for and verified every time. This
module offers the last session the server gave for a host on the next connection to it; the
server resumes it (an abbreviated handshake, its identity proven by the earlier verified one)
or ignores it (a full handshake, exactly as without it). A TLS session authenticates the
server, never a user: every connection still logs in with its own credentials, and nothing of
an IMAP session is shared.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, ClassVar


class _ResumingObject(ssl.SSLObject):
    """asyncio's TLS objects for one context, offering the host's last session."""

    sessions: ClassVar[dict[str, ssl.SSLSession]]

    @classmethod
    def _create(  # the one constructor `SSLContext.wrap_bio` calls (Python 3.7 to 3.13)
        cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
        server_hostname: str | None = None, session: ssl.SSLSession | None = None,
        context: ssl.SSLContext | None = None,
    ) -> Any:  # fmt: skip
        if session is None and not server_side and server_hostname is not None:
            session = cls.sessions.get(server_hostname)
        create = super()._create  # type: ignore[misc]
        return create(
            incoming, outgoing, server_side=server_side, server_hostname=server_hostname,
            session=session, context=context,
        )  # fmt: skip


def enable(context: ssl.SSLContext) -> None:
    """Let connections made with `context` offer their host's last session (idempotent)."""
    current = context.sslobject_class
    if isinstance(current, type) and issubclass(current, _ResumingObject):
        return
    sessions: dict[str, ssl.SSLSession] = {}
    context.sslobject_class = type("ResumingSSLObject", (_ResumingObject,), {"sessions": sessions})


def remember(transport: asyncio.BaseTransport) -> None:
    """Keep `transport`'s session for the next connection to its host.

    Call once the server has spoken after the handshake: TLS 1.3 sends its session tickets
    after the handshake (RFC 8446 section 4.6.1), so only then is the session resumable.
    """
    tls = transport.get_extra_info("ssl_object")
    if not isinstance(tls, _ResumingObject) or tls.server_hostname is None:
        return
    if tls.session_reused:
        return  # the session offered still works: reading a new one costs a copy of it
    session = tls.session
    if session is not None and (session.has_ticket or tls.version() != "TLSv1.3"):
        type(tls).sessions[tls.server_hostname] = session


def resumed(transport: asyncio.BaseTransport) -> bool:
    """Whether `transport`'s handshake resumed an earlier session."""
    tls = transport.get_extra_info("ssl_object")
    return isinstance(tls, ssl.SSLObject) and tls.session_reused
