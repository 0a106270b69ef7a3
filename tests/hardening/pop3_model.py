"""An executable model of a POP3 session (RFC 1939, with RFC 2449/5034 parts) for the stateful test.

The model is written from the RFCs and the README, not from popbridge's code: given one client
line (with what it is meant to be), it says which exact reply lines the server must send and
how the session changes. It tracks the state (AUTHORIZATION, TRANSACTION, closed), the
snapshot taken at login, the deleted set, the "PASS must follow USER" rule, a SASL exchange
in progress, the ten-strikes rule, per-connection and throttled login failures, and what the
upstream holds, including what QUIT must remove. Message bodies go through an independent
oracle of CRLF normalisation, byte-stuffing and TOP. Only random garbage lines are parsed with
popbridge's own parser; their meaning is then modelled like any other command.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from dataclasses import dataclass, field

from popbridge.pop3 import commands as c

CRLF = b"\r\n"
LINE_CAP, AUTH_LINE_CAP, MAX_STRIKES, MAX_FAILURES = 1024, 16384, 10, 3
USER_LOCKOUT, ADDRESS_LOCKOUT = 10, 20
PASSWORDS = {"alice": "secret"}
TOKENS = {"alice": "tok"}
MECHANISMS = ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER")
NOT_IN_STATE = b"-ERR command not valid in this state"
AUTH_FAILED = b"-ERR [AUTH] authentication failed"
CAPA = [b"TOP", b"USER", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
CAPA += [b"SASL " + " ".join(MECHANISMS).encode(), b"EXPIRE NEVER", b"IMPLEMENTATION popbridge"]
OAUTH_ERRORS = {
    "XOAUTH2": {"status": "401", "schemes": "bearer", "scope": "mail"},
    "OAUTHBEARER": {"status": "invalid_token"},
}
_ALLOWED = {
    "USER": "A", "PASS": "A", "APOP": "A", "AUTH": "A", "STLS": "A", "CAPA": "AT", "QUIT": "AT",
    "STAT": "T", "LIST": "T", "UIDL": "T", "RETR": "T", "TOP": "T", "DELE": "T", "NOOP": "T",
    "RSET": "T",
}  # fmt: skip


def canonical(data: bytes) -> bytes:
    """The message as RETR must send it before stuffing: CRLF everywhere, CRLF at the end."""
    text = re.sub(rb"\r\n|\r|\n", CRLF, data)
    return text + CRLF if text and not text.endswith(CRLF) else text


def top(data: bytes, lines: int) -> bytes:
    """RFC 1939 TOP: the header, the blank line, then `lines` body lines (all if fewer)."""
    text = canonical(data)
    end = 2 if text.startswith(CRLF) else text.find(CRLF + CRLF) + 4
    if end < 4 and not text.startswith(CRLF):
        return text  # no blank line: all header
    return text[:end] + b"".join(re.findall(rb"[^\n]*\n", text[end:])[:lines])


def multiline(status: bytes, content: bytes) -> list[bytes]:
    body = content.split(CRLF)[:-1] if content else []
    return [status, *(b"." + line if line.startswith(b".") else line for line in body), b"."]


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


@dataclass(frozen=True)
class Line:
    """One client line and what it means: ("cmd", VERB, *args), ("raw",) or ("sasl", ...)."""

    text: bytes
    meaning: tuple[object, ...] = ("raw",)
    ending: bytes = CRLF


@dataclass
class Stored:
    identity: str
    data: bytes


# Bugs proven by failing tests in test_bugs.py. The model describes the correct behaviour
# and raises KnownBug where popbridge still differs, so the stateful test skips just those
# examples; delete an entry once its bug is fixed and the model checks the fix too.
KNOWN_BUGS: frozenset[str] = frozenset()  # both found bugs are fixed (test_bugs.py)


class KnownBug(Exception):
    """The model reached a case where popbridge has a known, separately tested bug."""


def known_bug(name: str) -> None:
    if name in KNOWN_BUGS:
        raise KnownBug(name)


@dataclass
class Model:
    upstream: list[Stored]
    state: str = "A"  # "A" AUTHORIZATION, "T" TRANSACTION, "C" closed
    snapshot: list[Stored] = field(default_factory=list)
    deleted: set[int] = field(default_factory=set)
    awaiting: str | None = None  # the user name of an immediately preceding +OK USER
    sasl: tuple[object, ...] | None = None
    strikes: int = 0
    failures: int = 0
    user_failures: Counter[str] = field(default_factory=Counter)
    address_failures: int = 0
    mutations: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    locked_elsewhere: bool = False

    def reconnect(self) -> None:
        self.state, self.snapshot, self.deleted = "A", [], set()
        self.awaiting, self.sasl, self.strikes, self.failures = None, None, 0, 0

    def feed(self, line: Line) -> list[bytes]:
        """The exact reply lines to `line` (none once closed); updates the model."""
        if self.state == "C":
            return []
        full = line.text + line.ending
        cap = AUTH_LINE_CAP if self.sasl or full[:5].upper() in (b"AUTH ", b"PASS ") else LINE_CAP
        if len(full) > cap:
            self.sasl = None
            return self._strike(b"-ERR line too long")
        text = full[:-1].removesuffix(b"\r")
        if self.sasl is not None:
            return self._after(self._sasl_response(line.meaning, text))
        if line.meaning[0] != "cmd":
            return self._raw(text)
        verb, *args = line.meaning[1:]
        return self._dispatch(str(verb), args)

    def _raw(self, text: bytes) -> list[bytes]:
        parsed = c.parse_command(text)
        if isinstance(parsed, c.Invalid):
            return self._strike(b"-ERR " + parsed.reason.encode())
        verb = type(parsed).__name__.upper()
        if isinstance(parsed, c.Auth):
            if parsed.mechanism is not None:
                raise NotImplementedError("garbage that is a real AUTH exchange")
            return self._dispatch("AUTH", [None, None])
        return self._dispatch(verb, [getattr(parsed, name) for name in parsed.__slots__])

    def _strike(self, reply: bytes) -> list[bytes]:
        self.awaiting, self.sasl = None, None
        self.strikes += 1
        if self.strikes >= MAX_STRIKES:
            self.state = "C"
            return [b"-ERR too many errors, closing connection"]
        return [reply]

    def _dispatch(self, verb: str, args: list[object]) -> list[bytes]:
        if self.state not in _ALLOWED[verb]:
            return self._strike(NOT_IN_STATE)
        if verb == "PASS" and self.awaiting is None:
            return self._strike(b"-ERR PASS must follow a successful USER")
        self.strikes, user, self.awaiting = 0, self.awaiting, None
        return self._after(self._answer(verb, args, user))

    def _after(self, reply: list[bytes]) -> list[bytes]:
        """Close after the reply that completes the MAX_FAILURES-th failed login."""
        if self.failures >= MAX_FAILURES and not (self.sasl and self.sasl[0] == "REFUSAL"):
            self.state = "C"
        return reply

    def _answer(self, verb: str, args: list[object], user: str | None) -> list[bytes]:
        match verb:
            case "CAPA":
                return [b"+OK capability list follows", *CAPA, b"."]
            case "USER":
                self.awaiting = str(args[0])
                return [b"+OK send PASS"]
            case "PASS":
                assert user is not None
                return [self.login(user, str(args[0]))]
            case "AUTH":
                return self._auth(args)
            case "APOP":
                return [b"-ERR command not supported"]
            case "STLS":
                return [b"-ERR TLS not available on this port"]
            case "QUIT":
                self._update()
                return [b"+OK bye"]
        return self._transaction(verb, args)

    def _update(self) -> None:
        """RFC 1939 section 6: only QUIT from TRANSACTION removes, exactly the deleted."""
        if self.state == "T" and self.deleted:
            gone = tuple(self.snapshot[n - 1].identity for n in sorted(self.deleted))
            self.mutations.append(("expunge", gone))
            self.upstream = [m for m in self.upstream if m.identity not in gone]
        self.state = "C"

    def _live(self) -> list[tuple[int, Stored]]:
        return [(n, m) for n, m in enumerate(self.snapshot, 1) if n not in self.deleted]

    def _lookup(self, number: object) -> Stored | bytes:
        assert isinstance(number, int)
        if not 1 <= number <= len(self.snapshot):
            return b"-ERR no such message"
        if number in self.deleted:
            return b"-ERR message already deleted"
        return self.snapshot[number - 1]

    def _transaction(self, verb: str, args: list[object]) -> list[bytes]:
        if verb in ("NOOP", "RSET", "STAT") or (verb in ("LIST", "UIDL") and args[0] is None):
            return self._whole(verb)
        found = self._lookup(args[0])
        if isinstance(found, bytes):
            return [found]
        size, number = len(canonical(found.data)), args[0]
        if verb == "DELE":
            self.deleted.add(int(str(number)))
            return [b"+OK message %d deleted" % int(str(number))]
        if verb in ("LIST", "UIDL"):
            value = str(size) if verb == "LIST" else found.identity
            return [b"+OK %d %s" % (int(str(number)), value.encode())]
        if found.identity not in {m.identity for m in self.upstream}:
            return [b"-ERR message no longer available"]  # expunged by another client
        body = canonical(found.data) if verb == "RETR" else top(found.data, int(str(args[1])))
        return multiline(b"+OK %d octets" % size, body)

    def _whole(self, verb: str) -> list[bytes]:
        live = self._live()
        if verb == "NOOP":
            return [b"+OK"]
        if verb == "RSET":
            self.deleted.clear()
            return [b"+OK deletion marks removed"]
        if verb == "STAT":
            return [b"+OK %d %d" % (len(live), sum(len(canonical(m.data)) for _, m in live))]
        if verb == "LIST":
            lines = [b"%d %d" % (n, len(canonical(m.data))) for n, m in live]
            return [b"+OK scan listing follows", *lines, b"."]
        lines = [b"%d %s" % (n, m.identity.encode()) for n, m in live]
        return [b"+OK unique-id listing follows", *lines, b"."]

    def login(self, user: str, secret: str, mechanism: str = "password") -> bytes:
        """PASS or a finished SASL exchange, including throttling (README, [server])."""
        if self.address_failures >= ADDRESS_LOCKOUT:
            self.failures += 1
            return b"-ERR [SYS/TEMP] too many failed logins from your address, try later"
        if self.user_failures[user.casefold()] >= USER_LOCKOUT:
            self.failures += 1
            return b"-ERR [AUTH] too many failed logins, account temporarily locked"
        known = TOKENS if mechanism == "oauth2" else PASSWORDS
        if known.get(user) != secret:
            self.failures += 1
            self.address_failures += 1
            self.user_failures[user.casefold()] += 1
            return AUTH_FAILED
        if self.locked_elsewhere:
            return b"-ERR [IN-USE] maildrop already locked by another session"
        self.user_failures.pop(user.casefold(), None)
        self.state, self.snapshot, self.deleted = "T", list(self.upstream), set()
        octets = sum(len(canonical(m.data)) for m in self.snapshot)
        return b"+OK maildrop has %d messages (%d octets)" % (len(self.snapshot), octets)

    def _auth(self, args: list[object]) -> list[bytes]:
        mechanism, initial = args
        if mechanism is None:
            known_bug("auth-listing-enters-transaction")  # test_auth_listing_...
            return [b"+OK SASL mechanisms follow", *(m.encode() for m in MECHANISMS), b"."]
        if mechanism not in MECHANISMS:
            return [b"-ERR unsupported authentication mechanism"]
        if initial is None:
            self.sasl = ("LOGIN", None) if mechanism == "LOGIN" else (mechanism,)
            return [b"+ VXNlcm5hbWU6" if mechanism == "LOGIN" else b"+ "]
        assert isinstance(initial, tuple)
        self.sasl = ("LOGIN", None) if mechanism == "LOGIN" else (mechanism,)
        return self._sasl_response(("sasl", *initial), b"")

    def _sasl_response(self, meaning: tuple[object, ...], text: bytes) -> list[bytes]:
        state, self.sasl = self.sasl, None
        assert state is not None
        if state[0] == "REFUSAL":
            assert isinstance(state[1], bytes)
            return [state[1]]
        kind = meaning[1] if meaning[0] == "sasl" else "cancel" if text == b"*" else "raw"
        if kind == "cancel":
            return [b"-ERR authentication cancelled"]
        if kind == "error":
            return [b"-ERR " + str(meaning[2]).encode()]
        if kind == "login-user" and state == ("LOGIN", None):
            self.sasl = ("LOGIN", meaning[2])
            return [b"+ UGFzc3dvcmQ6"]
        if kind == "login-pass" and state[0] == "LOGIN" and state[1] is not None:
            return self._finish("LOGIN", str(state[1]), str(meaning[2]))
        if kind == "creds" and state[0] != "LOGIN":
            return self._finish(str(state[0]), str(meaning[2]), str(meaning[3]))
        raise NotImplementedError(f"SASL line {meaning} in state {state}")

    def _finish(self, mechanism: str, user: str, secret: str) -> list[bytes]:
        oauth = mechanism in OAUTH_ERRORS
        reply = self.login(user, secret, "oauth2" if oauth else "password")
        if oauth and reply.startswith(b"-ERR [AUTH]"):
            if self.failures >= MAX_FAILURES:
                known_bug("oauth-last-failure-no-err")  # test_last_failed_oauth_login_...
            self.sasl = ("REFUSAL", reply)  # RFC 7628 section 3.2.2: a challenge, then -ERR
            return [b"+ " + b64(json.dumps(OAUTH_ERRORS[mechanism]).encode())]
        return [reply]
