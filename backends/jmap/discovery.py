"""The JMAP Session resource: where the API and downloads live, which account, what limits.

This module owns session discovery (RFC 8620 section 2.2: GET `/.well-known/jmap`, following
redirects within its origin, or the configured `session_url`), reading the Session object
(section 2: the `urn:ietf:params:jmap:core` limits, `primaryAccounts` for mail, `username`,
`apiUrl` and `downloadUrl` resolved against the URL the Session came from, RFC 3986
section 5, never from https to http, never http except to this machine), telling the
transport where credentials may go from then on, and expanding the `downloadUrl` URI
template (RFC 6570 level 1), where every value is percent-encoded so a blobId or account id
can never change the URL's structure.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from backends.jmap.transport import Reply, Transport, origin, status_error
from popbridge.errors import AuthFailed, BackendFailure
from popbridge.upstream.tls import is_loopback

logger = logging.getLogger(__name__)

CORE = "urn:ietf:params:jmap:core"
MAIL = "urn:ietf:params:jmap:mail"
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
# RFC 6570 section 2.3: a level-1 expression is `{varname}`, varname = varchar *("." varchar).
_EXPRESSION = re.compile(r"\{([^{}]*)\}")
_VARNAME = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
# RFC 8620 section 2: "Suggested minimum" values, used where a server states none.
_DEFAULT_LIMITS = {
    "maxSizeRequest": 10_000_000,
    "maxCallsInRequest": 16,
    "maxObjectsInGet": 500,
    "maxObjectsInSet": 500,
}


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's `urn:ietf:params:jmap:core` limits this backend plans its requests by."""

    max_size_request: int
    max_calls_in_request: int
    max_objects_in_get: int
    max_objects_in_set: int


@dataclass(frozen=True, slots=True)
class Session:
    """What the Session resource told us, with absolute URLs."""

    url: str
    api_url: str
    download_template: str
    account_id: str
    state: str
    limits: Limits
    sort_options: frozenset[str] = frozenset()
    username: str = ""  # whom the credentials authenticate (RFC 8620 section 2)

    def download_url(self, blob_id: str, name: str = "message.eml") -> str:
        """The blob's download URL (RFC 8620 section 6.2); `type` asks for the raw message."""
        values = {"accountId": self.account_id, "blobId": blob_id}
        return expand(self.download_template, values | {"type": "message/rfc822", "name": name})


def expand(template: str, values: Mapping[str, str]) -> str:
    """RFC 6570 level-1 expansion: `{var}` becomes the value with everything but unreserved
    characters percent-encoded (section 3.2.2); an undefined variable becomes empty."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if not _VARNAME.fullmatch(name):
            raise BackendFailure(f"downloadUrl is not a level-1 URI template: {{{name}}}")
        return quote(values.get(name, ""), safe="")

    return _EXPRESSION.sub(substitute, template)


async def get_following(transport: Transport, url: str) -> Reply:
    """GET `url`, following up to five redirects ourselves (RFC 8620 section 2.2) within its
    origin (RFC 6454): the credentials go to no other host, and never from https to http,
    because a server said so (as curl and browsers do). Another origin is the operator's
    to name, as `session_url`."""
    for _ in range(MAX_REDIRECTS + 1):
        reply = await transport.fetch("GET", url)
        location = reply.headers.get("Location")
        if reply.status not in _REDIRECTS or not location:
            return reply
        target = urljoin(url, location)
        if urlsplit(target).scheme not in ("http", "https"):
            raise BackendFailure(f"{url}: redirect to a non-HTTP URL")
        if origin(target) != origin(url):
            raise BackendFailure(
                f"{url}: refusing a redirect to another origin ({target}); if that server"
                " is the right one, configure session_url with it"
            )
        logger.debug("%s: HTTP %d to %s", url, reply.status, target)
        url = target
    raise BackendFailure(f"{url}: more than {MAX_REDIRECTS} redirects")


async def discover(transport: Transport, session_url: str) -> Session:
    """Fetch and read the Session resource (RFC 8620 section 2) with the user's credentials."""
    reply = await get_following(transport, session_url)
    if reply.status != 200:
        error = status_error(reply.status, reply.url, "")
        if reply.status == 403:  # authenticated, but this user may not use JMAP here
            error = AuthFailed(f"{reply.url}: HTTP 403")
        raise error
    session = parse_session(reply.json(), reply.url)
    transport.trust(session.url, session.api_url, session.download_template)
    return session


def parse_session(data: Any, base: str) -> Session:
    """A Session from its JSON; BackendFailure names what is missing or unusable."""
    if not isinstance(data, dict):
        raise BackendFailure(f"{base}: the Session resource is not a JSON object")
    capabilities = data.get("capabilities")
    if not isinstance(capabilities, dict) or MAIL not in capabilities:
        raise BackendFailure(f"{base}: the server does not offer {MAIL} (RFC 8621)")
    primary = data.get("primaryAccounts")
    account = primary.get(MAIL) if isinstance(primary, dict) else None
    if not isinstance(account, str) or not account:
        raise BackendFailure(f"{base}: no primary account for {MAIL}")
    state, username = data.get("state"), data.get("username")
    return Session(
        username=username if isinstance(username, str) else "",
        sort_options=_sort_options(data.get("accounts"), account),
        url=base,
        api_url=_absolute(base, data.get("apiUrl"), "apiUrl"),
        download_template=_absolute(base, data.get("downloadUrl"), "downloadUrl"),
        account_id=account,
        state=state if isinstance(state, str) else "",
        limits=_limits(capabilities.get(CORE)),
    )


def _absolute(base: str, value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise BackendFailure(f"{base}: the Session has no {name}")
    resolved = urljoin(base, value)  # braces of a template survive: urljoin only splits
    scheme, host, _ = origin(resolved)
    secure = scheme == "https" or (scheme == "http" and is_loopback(host))
    if not secure or (origin(base)[0] == "https" and scheme != "https"):
        raise BackendFailure(f"{base}: {name} {resolved!r} is not an acceptable URL")
    if name == "downloadUrl" and "{blobId}" not in resolved:
        raise BackendFailure(f"{base}: downloadUrl has no {{blobId}} variable")
    return resolved


def _sort_options(accounts: Any, account: str) -> frozenset[str]:
    """The Email sort properties the account supports: `emailQuerySortOptions` (RFC 8621
    section 1.3.1), or `emailsListSortOptions`, the draft name Cyrus 3.6 still uses."""
    entry = accounts.get(account) if isinstance(accounts, dict) else None
    capabilities = entry.get("accountCapabilities") if isinstance(entry, dict) else None
    mail = capabilities.get(MAIL) if isinstance(capabilities, dict) else None
    if not isinstance(mail, dict):
        return frozenset()
    for name in ("emailQuerySortOptions", "emailsListSortOptions"):
        options = mail.get(name)
        if isinstance(options, list):
            return frozenset(o for o in options if isinstance(o, str))
    return frozenset()


def _limits(core: Any) -> Limits:
    """The core limits; an absent or unusable value falls back to the suggested minimum."""
    given = core if isinstance(core, dict) else {}

    def limit(name: str) -> int:
        value = given.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        return _DEFAULT_LIMITS[name]

    return Limits(
        max_size_request=limit("maxSizeRequest"),
        max_calls_in_request=limit("maxCallsInRequest"),
        max_objects_in_get=limit("maxObjectsInGet"),
        max_objects_in_set=limit("maxObjectsInSet"),
    )
