"""What an IMAP login sends, and the forms its secrets take in what comes back.

This module owns the login encodings (RFC 3501 6.2.3 LOGIN's quoted strings, RFC 4616 SASL
PLAIN, XOAUTH2) with their bounds, and the ways a secret can appear in a server's echo so
that logs and errors can be scrubbed of it. Nothing here touches a socket.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

from backends.imap.wire import quote

_CONTROL = re.compile(r"[\x00\r\n]")
# RFC 4616 section 2: servers MUST accept 255 octets; more is allowed but we stay bounded.
MAX_CREDENTIAL_OCTETS = 1024
MAX_TOKEN_OCTETS = 16384


def check_credential(value: str, *, limit: int = MAX_CREDENTIAL_OCTETS) -> None:
    """Refuse what no SASL or LOGIN encoding may carry: NUL, CR, LF; and oversized values."""
    if _CONTROL.search(value):
        raise ValueError("credential contains NUL, CR or LF")
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise ValueError("credential too long")


def sasl_plain(user: str, password: str) -> str:
    """The base64 SASL PLAIN response `\\0user\\0password` (RFC 4616 section 2), UTF-8."""
    check_credential(user)
    check_credential(password)
    if not user:
        raise ValueError("empty user name")
    raw = b"\0" + user.encode("utf-8") + b"\0" + password.encode("utf-8")
    return base64.b64encode(raw).decode("ascii")


def xoauth2(user: str, token: str) -> str:
    """The base64 XOAUTH2 response `user=U^Aauth=Bearer T^A^A` (Google/Microsoft spec)."""
    check_credential(user)
    check_credential(token, limit=MAX_TOKEN_OCTETS)
    if not user or not token or "\x01" in user or "\x01" in token:
        raise ValueError("unusable XOAUTH2 user or token")
    raw = f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    return base64.b64encode(raw).decode("ascii")


def login_arguments(user: str, password: str) -> tuple[str, str]:
    """LOGIN's two arguments as quoted strings; ValueError for what a quoted string can't hold."""
    check_credential(user)
    check_credential(password)
    if not user:
        raise ValueError("empty user name")
    return quote(user), quote(password)


def secret_forms(secret: str) -> list[str]:
    """The ways `secret` can appear in what a server echoes back: as is, escaped in a quoted
    string, and inside a base64 SASL response (RFC 4616 PLAIN, XOAUTH2), longest first."""
    forms = {secret, secret.replace("\\", "\\\\").replace('"', '\\"')}
    raw = secret.encode("utf-8", "surrogatepass")
    # In base64 the secret starts at one of three bit alignments; for each, the characters
    # that encode only its bits are the same whatever comes before or after it.
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode("ascii")
        start = -(-8 * shift // 6)  # the first character holding no bit before the secret
        end = 8 * (shift + len(raw)) // 6  # past the last one holding no bit after it
        if end - start >= 4:
            forms.add(encoded[start:end])
    return sorted((form for form in forms if form), key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each of `secrets` replaced by `***`."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
