"""SASL mechanisms for POP3 AUTH (RFC 5034), with no I/O: bytes in, outcomes out.

Each mechanism turns the client's decoded responses into either a challenge to send or an
`Outcome`: who is logging in and with which secret. PLAIN (RFC 4616) and LOGIN carry
passwords; XOAUTH2 (Google's protocol) and OAUTHBEARER (RFC 7628) carry bearer tokens that
the bridge passes upstream. Base64 is decoded strictly: characters outside the alphabet
and misplaced padding are refused, not skipped (RFC 5034 section 4), because Python's
default decoder silently drops them. Errors carry a fixed text that never echoes input.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Final, Protocol

MAX_FIELD: Final = 1024  # RFC 4616 section 2 asks for at least 255 octets per field
MAX_TOKEN: Final = 12000


class SaslFailed(Exception):
    """The exchange is over; `str(self)` is safe for the wire."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """Raw challenge bytes; the session base64-encodes them (RFC 5034 section 4)."""

    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Outcome:
    """A completed exchange: log `user` in with `secret` ("password" or "oauth2")."""

    user: str
    secret: str
    mechanism: str = "password"

    def __repr__(self) -> str:
        return f"Outcome(user={self.user!r}, mechanism={self.mechanism!r})"


Step = Challenge | Outcome


def decode(text: str, *, initial: bool = False) -> bytes:
    """Strict base64; "=" is an empty initial response (RFC 5034 section 4)."""
    if initial and text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SaslFailed("invalid base64") from None


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _utf8(raw: bytes, what: str) -> str:
    if not raw:
        raise SaslFailed(f"empty {what}")
    if len(raw) > (MAX_TOKEN if what == "token" else MAX_FIELD):
        raise SaslFailed(f"{what} too long")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslFailed(f"{what} is not UTF-8") from None


class Mechanism(Protocol):
    name: str

    def start(self, initial: bytes | None) -> Step:
        """Begin, with the decoded initial response or None when none was sent."""
        ...

    def step(self, response: bytes) -> Step: ...

    def failure_challenge(self) -> bytes | None:
        """Bytes to send as a challenge after the upstream refused (OAuth mechanisms)."""
        ...


class Plain:
    """RFC 4616: [authzid] NUL authcid NUL passwd, in one client-first message."""

    name = "PLAIN"

    def start(self, initial: bytes | None) -> Step:
        return Challenge() if initial is None else self.step(initial)

    def step(self, response: bytes) -> Step:
        fields = response.split(b"\0")
        if len(fields) != 3:
            raise SaslFailed("malformed PLAIN message")
        authzid, authcid, password = fields
        user = _utf8(authcid, "user name")
        # RFC 4616 section 2 / conformance S-12: one login reaches exactly one mailbox
        if authzid and authzid != authcid:
            raise SaslFailed("authorization identity not permitted")
        return Outcome(user, _utf8(password, "password"))

    def failure_challenge(self) -> bytes | None:
        return None


class Login:
    """The LOGIN mechanism (draft-murchison-sasl-login): "Username:", then "Password:"."""

    name = "LOGIN"

    def __init__(self) -> None:
        self._user: str | None = None

    def start(self, initial: bytes | None) -> Step:
        return Challenge(b"Username:") if initial is None else self.step(initial)

    def step(self, response: bytes) -> Step:
        if self._user is None:
            self._user = _utf8(response, "user name")
            return Challenge(b"Password:")
        return Outcome(self._user, _utf8(response, "password"))

    def failure_challenge(self) -> bytes | None:
        return None


def _bearer(value: bytes) -> str:
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"bearer" or not token:
        raise SaslFailed("malformed bearer token")
    return _utf8(token.strip(), "token")


class XOAuth2:
    """Google's XOAUTH2: base64("user=" U ^A "auth=Bearer " T ^A ^A)."""

    name = "XOAUTH2"

    def start(self, initial: bytes | None) -> Step:
        return Challenge() if initial is None else self.step(initial)

    def step(self, response: bytes) -> Step:
        pairs = dict(_kv(part, b"=") for part in response.split(b"\x01") if part)
        if b"user" not in pairs or b"auth" not in pairs:
            raise SaslFailed("malformed XOAUTH2 message")
        return Outcome(_utf8(pairs[b"user"], "user name"), _bearer(pairs[b"auth"]), "oauth2")

    def failure_challenge(self) -> bytes | None:
        return json.dumps({"status": "401", "schemes": "bearer", "scope": "mail"}).encode()


class OAuthBearer:
    """RFC 7628 section 3.1: GS2 header "n,a=user," then ^A-separated key=value pairs."""

    name = "OAUTHBEARER"

    def start(self, initial: bytes | None) -> Step:
        return Challenge() if initial is None else self.step(initial)

    def step(self, response: bytes) -> Step:
        header, _, rest = response.partition(b"\x01")
        gs2 = header.split(b",")
        if len(gs2) < 3 or gs2[0] not in (b"n", b"y") or not gs2[1].startswith(b"a="):
            raise SaslFailed("malformed OAUTHBEARER message")
        # RFC 7628 section 3.1: unknown keys are ignored; "auth" is required
        pairs = dict(_kv(part, b"=") for part in rest.split(b"\x01") if part)
        if b"auth" not in pairs:
            raise SaslFailed("malformed OAUTHBEARER message")
        user = _utf8(gs2[1][2:].replace(b"=2C", b",").replace(b"=3D", b"="), "user name")
        return Outcome(user, _bearer(pairs[b"auth"]), "oauth2")

    def failure_challenge(self) -> bytes | None:
        return json.dumps({"status": "invalid_token"}).encode()  # RFC 7628 section 3.2.2


def _kv(part: bytes, separator: bytes) -> tuple[bytes, bytes]:
    key, found, value = part.partition(separator)
    if not found:
        raise SaslFailed("malformed key=value pair")
    return key, value


PASSWORD_MECHANISMS: Final = ("PLAIN", "LOGIN")
TOKEN_MECHANISMS: Final = ("XOAUTH2", "OAUTHBEARER")
ALL_MECHANISMS: Final = PASSWORD_MECHANISMS + TOKEN_MECHANISMS
_FACTORIES: Final[dict[str, type[Plain] | type[Login] | type[XOAuth2] | type[OAuthBearer]]] = {
    "PLAIN": Plain,
    "LOGIN": Login,
    "XOAUTH2": XOAuth2,
    "OAUTHBEARER": OAuthBearer,
}


def mechanism(name: str) -> Mechanism | None:
    """A fresh mechanism object, or None for a name we do not implement."""
    factory = _FACTORIES.get(name)
    return factory() if factory is not None else None
