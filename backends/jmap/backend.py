"""The JMAP `Backend`: opens a Mailbox for a user, and probes the server for `check`.

This module owns the login order (credentials screened, then the Session resource fetched
with them, RFC 8620 section 2; then Mailbox/get to find the maildrop by role or name,
RFC 8621 section 2) and the connectivity report. The POP3 password becomes HTTP Basic
credentials (RFC 7617) and an OAuth 2.0 token a Bearer token (RFC 6750), both only in the
Authorization header; anything those encodings cannot carry is refused before any
connection. A bearer token names no user, so the Session's `username` must be the POP3
user name, compared without case: the core keys the maildrop lock and the UID map on that
name, which is then the upstream identity. A Session without a username cannot bind the
token and is refused (an account's `name` is only a label, which its owner may choose).
If a step fails, the connection pool is closed before the error leaves.
"""

from __future__ import annotations

import base64
import logging
import re

from backends.jmap import folders
from backends.jmap.api import Api, MethodError
from backends.jmap.config import JmapSettings
from backends.jmap.discovery import Session, discover, get_following, parse_session
from backends.jmap.mailbox import JmapMailbox
from backends.jmap.transport import Transport, origin, tls_version
from popbridge.contract import Credentials
from popbridge.errors import AuthFailed, BackendFailure, BridgeError

logger = logging.getLogger(__name__)

MAX_CREDENTIAL_OCTETS = 1024
MAX_TOKEN_OCTETS = 16384
# RFC 7617 section 2: no control characters in user-id or password; no ":" in the user-id.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def authorization(credentials: Credentials) -> str:
    """The Authorization header value; AuthFailed for what cannot be sent safely."""
    user, secret = credentials.user, credentials.secret
    if credentials.mechanism == "oauth2":
        if len(secret) > MAX_TOKEN_OCTETS or not _B64TOKEN.fullmatch(secret):
            raise AuthFailed("bearer token refused before sending: not an RFC 6750 b64token")
        return f"Bearer {secret}"
    if credentials.mechanism != "password":
        raise AuthFailed(f"unsupported mechanism {credentials.mechanism!r}")
    if not user or ":" in user or _CONTROL.search(user) or _CONTROL.search(secret):
        raise AuthFailed("credentials refused before sending: empty, ':' or control characters")
    raw = f"{user}:{secret}".encode("utf-8", "surrogatepass")
    if len(raw) > 2 * MAX_CREDENTIAL_OCTETS:
        raise AuthFailed("credentials refused before sending: too long")
    return "Basic " + base64.b64encode(raw).decode("ascii")


class JmapBackend:
    """A JMAP upstream: one connection pool per opened mailbox."""

    def __init__(self, settings: JmapSettings) -> None:
        self.settings = settings

    async def open(self, credentials: Credentials) -> JmapMailbox:
        """Find the Session and the maildrop; raises AuthFailed, BackendUnavailable/Failure."""
        transport = Transport(self.settings, authorization(credentials))
        try:
            session = await discover(transport, self.settings.session_url)
            if credentials.mechanism == "oauth2":
                _check_token_user(session, credentials.user)
            api = Api(transport, session)
            mailbox_id = await self._maildrop(api)
        except BaseException:
            await transport.close()
            raise
        logger.debug("%s: opened account %r", session.url, session.account_id)
        return JmapMailbox(
            api,
            mailbox_id,
            fetch_chunk=self.settings.fetch_chunk,
            page_size=self.settings.page_size,
        )

    async def _maildrop(self, api: Api) -> str:
        """The configured Mailbox, or the one whose role is inbox (RFC 8621 section 2)."""
        try:
            found = await folders.load(api)
        except MethodError as exc:
            # Cyrus answers accountNotFound until the user's INBOX exists (first IMAP login).
            raise BackendFailure(f"{api.session.url}: Mailbox/get: {exc}") from None
        name = self.settings.mailbox
        folder = folders.by_role(found, "inbox") if name is None else folders.by_path(found, name)
        if folder is None:
            wanted = "with the inbox role" if name is None else f"named {name!r}"
            raise BackendFailure(f"{api.session.url}: no mailbox {wanted}")
        return folder.id

    async def check(self) -> list[str]:
        """GET the Session resource without credentials and report what answered."""
        transport = Transport(self.settings, None)
        try:
            reply = await get_following(transport, self.settings.session_url)
        finally:
            await transport.close()
        findings = [f"session resource {reply.url}: HTTP {reply.status}"]
        if origin(reply.url)[0] == "https":
            version = await tls_version(self.settings, reply.url)
            findings.append(f"TLS verified: {version}, certificate chain and host name checked")
        else:
            findings.append("TLS: none (cleartext http)")
        if reply.status == 401:
            schemes = reply.headers.get("WWW-Authenticate", "")
            findings.append(
                f"authentication required, as expected ({schemes[:100] or 'no scheme'})"
            )
        elif reply.status == 200:
            findings += _session_findings(reply.json(), reply.url)
        else:
            findings.append("unexpected status: the URL may not be a JMAP Session resource")
        return findings


def _check_token_user(session: Session, user: str) -> None:
    """AuthFailed unless the Session says the token is `user`'s: a valid token presented
    with another user's name must not open, lock or map that user's maildrop."""
    upstream = session.username
    if not upstream:
        logger.warning("%s: the Session names no username: bearer tokens refused", session.url)
    elif upstream.casefold() != user.casefold():
        logger.info("%s: a bearer token of %r presented as %r", session.url, upstream, user)
    else:
        return
    raise AuthFailed(f"{session.url}: the bearer token is not {user!r}'s")


def _session_findings(data: object, url: str) -> list[str]:
    try:
        session = parse_session(data, url)
    except BridgeError as exc:
        return [f"Session resource unusable: {exc}"]
    limits = session.limits
    return [
        f"mail account {session.account_id!r}, API at {session.api_url}",
        f"limits: maxObjectsInGet {limits.max_objects_in_get}, "
        f"maxObjectsInSet {limits.max_objects_in_set}, "
        f"maxCallsInRequest {limits.max_calls_in_request}",
    ]
