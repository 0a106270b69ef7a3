"""POP3 commands as frozen values, and the strict parser that turns one line into one.

The parser owns every syntax rule of RFC 1939 section 3 and RFC 2449 section 3: a 3-4
character case-insensitive keyword, arguments separated by single spaces, printable ASCII
only (UTF-8 allowed in USER and PASS arguments), and numbers as 1-10 ASCII digits. Python's
`int()` accepts "1_0", " 7 ", "+3" and Arabic-Indic digits, so numbers are matched by a
bytes pattern first (conformance P-1.9). A line that breaks a rule becomes `Invalid` with a
fixed reason that never echoes client input (conformance P-1.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_NUMBER: Final = re.compile(rb"[0-9]+")
# RFC 1939 gives numbers no upper bound. A longer number stands for one past anything that
# can exist: as a message number it names no message, as TOP's count it means every line.
_EXACT_DIGITS: Final = 18
BEYOND_ANY: Final = 10**_EXACT_DIGITS
_KEYWORD: Final = re.compile(rb"[A-Za-z]{3,4}")
# RFC 2449 section 3: params are VCHAR (0x21-0x7E); PASS keeps spaces, so SP is checked apart.
_FORBIDDEN_ASCII: Final = re.compile(rb"[\x00-\x1f\x7f]")
_NON_ASCII: Final = re.compile(rb"[\x80-\xff]")
MAX_NAME_OCTETS: Final = 255  # RFC 4616 section 2: accept up to 255 octets per field


@dataclass(frozen=True, slots=True)
class User:
    name: str


@dataclass(frozen=True, slots=True)
class Pass:
    """PASS; the engine fills in `user` from the USER it accepted just before."""

    password: str
    user: str = ""

    def __repr__(self) -> str:  # never let a password reach a log through repr
        return f"Pass(user={self.user!r}, password=<hidden>)"


@dataclass(frozen=True, slots=True)
class Apop:
    pass


@dataclass(frozen=True, slots=True)
class Auth:
    mechanism: str | None
    initial_response: str | None = None

    def __repr__(self) -> str:
        return f"Auth(mechanism={self.mechanism!r})"


@dataclass(frozen=True, slots=True)
class SaslResponse:
    """A client line sent in answer to a "+ " challenge (RFC 5034 section 4)."""

    data: str

    def __repr__(self) -> str:
        return "SaslResponse(<hidden>)"


@dataclass(frozen=True, slots=True)
class Stls:
    pass


@dataclass(frozen=True, slots=True)
class Capa:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Stat:
    pass


@dataclass(frozen=True, slots=True)
class List:
    msg: int | None = None


@dataclass(frozen=True, slots=True)
class Uidl:
    msg: int | None = None


@dataclass(frozen=True, slots=True)
class Retr:
    msg: int


@dataclass(frozen=True, slots=True)
class Top:
    msg: int
    lines: int


@dataclass(frozen=True, slots=True)
class Dele:
    msg: int


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class Invalid:
    """A line that is not a valid command; `reason` is safe to send to the client."""

    reason: str


Command = (
    User
    | Pass
    | Apop
    | Auth
    | SaslResponse
    | Stls
    | Capa
    | Quit
    | Stat
    | List
    | Uidl
    | Retr
    | Top
    | Dele
    | Noop
    | Rset
)

_NO_ARGS: Final[dict[bytes, Command]] = {
    b"STLS": Stls(),
    b"CAPA": Capa(),
    b"QUIT": Quit(),
    b"STAT": Stat(),
    b"NOOP": Noop(),
    b"RSET": Rset(),
}
_ONE_NUMBER: Final[dict[bytes, type[Retr] | type[Dele]]] = {b"RETR": Retr, b"DELE": Dele}
_OPTIONAL_NUMBER: Final[dict[bytes, type[List] | type[Uidl]]] = {b"LIST": List, b"UIDL": Uidl}


def parse_number(raw: bytes) -> int | None:
    """A decimal of ASCII digits, or None (no sign, no "_", no other scripts).

    Any length is accepted (the line cap bounds it); a value of more than 18 digits is
    `BEYOND_ANY`, so no huge integer is ever built from client input.
    """
    if not _NUMBER.fullmatch(raw):
        return None
    digits = raw.lstrip(b"0") or b"0"
    return int(digits) if len(digits) <= _EXACT_DIGITS else BEYOND_ANY


def _text(raw: bytes, what: str) -> str | Invalid:
    """Decode a USER/PASS argument: UTF-8, no controls, at most 255 octets."""
    if not raw:
        return Invalid(f"missing {what}")
    if len(raw) > MAX_NAME_OCTETS:
        return Invalid(f"{what} too long")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return Invalid(f"{what} is not valid UTF-8")


def parse_command(line: bytes) -> Command | Invalid:
    """Parse one line, without its CRLF, into a command or an `Invalid` reason."""
    if _FORBIDDEN_ASCII.search(line):
        return Invalid("control characters are not allowed")
    keyword, _, rest = line.partition(b" ")
    if not _KEYWORD.fullmatch(keyword):
        return Invalid("unknown command")
    keyword = keyword.upper()
    if keyword == b"PASS":  # RFC 1939 section 7: the password may contain spaces
        password = _text(rest, "password")
        return password if isinstance(password, Invalid) else Pass(password)
    if _NON_ASCII.search(line) and keyword != b"USER":
        return Invalid("non-ASCII characters are not allowed")
    rest = rest.rstrip(b" ")  # tolerate trailing spaces some old clients send
    args = rest.split(b" ") if rest else []
    return _parse_keyword(keyword, args)


def _parse_keyword(keyword: bytes, args: list[bytes]) -> Command | Invalid:
    if any(not arg for arg in args):
        return Invalid("arguments must be separated by a single space")
    if keyword in _NO_ARGS:
        return _NO_ARGS[keyword] if not args else Invalid("this command takes no arguments")
    if keyword in _ONE_NUMBER:
        number = parse_number(args[0]) if len(args) == 1 else None
        return _ONE_NUMBER[keyword](number) if number is not None else _bad_number(args)
    if keyword in _OPTIONAL_NUMBER:
        if not args:
            return _OPTIONAL_NUMBER[keyword]()
        number = parse_number(args[0]) if len(args) == 1 else None
        return _OPTIONAL_NUMBER[keyword](number) if number is not None else _bad_number(args)
    if keyword == b"TOP":
        return _parse_top(args)
    if keyword == b"USER":
        name = _text(args[0], "user name") if len(args) == 1 else Invalid("one user name needed")
        return name if isinstance(name, Invalid) else User(name)
    if keyword == b"AUTH":
        return _parse_auth(args)
    if keyword == b"APOP":
        return Apop()
    return Invalid("unknown command")


def _bad_number(args: list[bytes]) -> Invalid:
    return Invalid("one message number needed" if len(args) != 1 else "invalid message number")


def _parse_top(args: list[bytes]) -> Top | Invalid:
    if len(args) != 2:
        return Invalid("TOP needs a message number and a line count")
    msg, lines = parse_number(args[0]), parse_number(args[1])
    if msg is None:
        return Invalid("invalid message number")
    if lines is None:
        return Invalid("invalid line count")
    return Top(msg, lines)


def _parse_auth(args: list[bytes]) -> Auth | Invalid:
    if not args:
        return Auth(None)
    if len(args) > 2:
        return Invalid("AUTH takes a mechanism and an optional initial response")
    initial = args[1].decode("ascii") if len(args) == 2 else None
    return Auth(args[0].decode("ascii").upper(), initial)
