"""IMAP syntax without I/O: what the IMAP backend sends and how it reads what comes back.

This module owns every string that reaches the upstream server from user or config input
(quoted strings, atoms, modified UTF-7 mailbox names, UID sets; logins are in `logins`) and the
parsers for the responses the backend relies on (FETCH, SEARCH, LIST, capabilities, response
codes). It works on the parts aioimaplib hands over: text lines as `bytes` and literal payloads
as `bytearray`. Nothing here touches a socket, so every rule is unit-testable in isolation.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from backends.imap import tokens
from backends.imap.tokens import Part as Part
from backends.imap.tokens import ProtocolError as ProtocolError
from backends.imap.tokens import Value as Value
from backends.imap.tokens import printable as printable

_CONTROL = re.compile(r"[\x00\r\n]")
# RFC 3501 section 9: ATOM-CHAR is any CHAR except atom-specials.
_ATOM = re.compile(r"\A[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+\Z")
_IDENTITY = re.compile(r"\A([0-9]{1,10})\.([0-9]{1,10})\Z")
_FETCH_START = re.compile(rb"\A(?:\* )?[0-9]+ FETCH ", re.IGNORECASE)
# What a listing asks for each message: its size, and hints that let the core recognise a
# message if UIDVALIDITY ever changes (conformance I-6).
LISTING_ITEMS = "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
# The answer to LISTING_ITEMS as Dovecot (and most servers) send it: the items in the order
# asked, the date a quoted string without escapes, the header block a literal.
_LISTING_RESPONSE = re.compile(
    rb"\A(?:\* )?[0-9]+ FETCH \(UID ([0-9]{1,10}) RFC822\.SIZE ([0-9]{1,18}) "
    rb'INTERNALDATE "([^"\\]*)" (BODY\[HEADER\.FIELDS \(MESSAGE-ID\)\]) \{([0-9]{1,18})\}\Z',
    re.IGNORECASE,
)
# A body section's FETCH response as Dovecot, Cyrus and Courier send it: UID, then the
# section with its origin (RFC 3501 7.4.2), then a literal that ends the line.
_BODY_RESPONSE = re.compile(
    rb"\A(?:\* )?[0-9]+ FETCH \(UID ([0-9]{1,10}) (BODY\[\](?:<[0-9]{1,18}>)?) \{([0-9]{1,18})\}\Z",
    re.IGNORECASE,
)
_LIST_START = re.compile(rb"\A(?:\* )?(?:LIST )?(?=\()", re.IGNORECASE)
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY ([0-9]{1,10})\]", re.IGNORECASE)
_CODE = re.compile(rb"\A\[([A-Za-z0-9.\-]+)")
_CAPABILITY_CODE = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)
_MONTHS = b"jan feb mar apr may jun jul aug sep oct nov dec".split()
_MONTH_NUMBERS = {name: number for number, name in enumerate(_MONTHS, 1)}  # keys lower-case
_INTERNALDATE = re.compile(
    rb" ?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2})"
    rb" ([+-][0-9]{4})"
)
_FOLDED = re.compile(rb"\r?\n[ \t]+")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(\S[^\r\n]*)", re.IGNORECASE | re.MULTILINE)


# ---------------------------------------------------------------- what we send


def quote(text: str) -> str:
    """An IMAP quoted string (RFC 3501 sections 4.3 and 9: 7-bit, no CR/LF, escaped)."""
    if _CONTROL.search(text) or not text.isascii():
        raise ValueError("not representable as an IMAP quoted string")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_keyword(text: str) -> bool:
    """True if `text` is a user keyword: an atom that is not a `\\` system flag (RFC 3501 9)."""
    return bool(_ATOM.match(text))


def encode_mailbox(name: str) -> str:
    """A mailbox name in modified UTF-7 (RFC 3501 section 5.1.3), ready for `quote`."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = base64.b64encode("".join(pending).encode("utf-16-be")).rstrip(b"=")
            out.append("&" + raw.replace(b"/", b",").decode("ascii") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def uid_set(uids: Iterable[int]) -> str:
    """A compact UID set covering exactly `uids` (RFC 3501 9 sequence-set).

    Only runs of consecutive numbers become ranges, so the set never names a UID we were
    not asked about (RFC 1939 section 6: never touch an unmarked message).
    """
    ordered = sorted(set(uids))
    ranges: list[str] = []
    index = 0
    while index < len(ordered):
        end = index
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        first, last = ordered[index], ordered[end]
        ranges.append(str(first) if first == last else f"{first}:{last}")
        index = end + 1
    return ",".join(ranges)


def batches(uids: Sequence[int], size: int) -> Iterator[list[int]]:
    """`uids` in slices of at most `size`, so no single reply grows without bound."""
    for start in range(0, len(uids), size):
        yield list(uids[start : start + size])


def parse_identity(identity: str) -> tuple[int, int] | None:
    """(UIDVALIDITY, UID) from an identity `"<uidvalidity>.<uid>"`; None if malformed."""
    match = _IDENTITY.match(identity)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


# ------------------------------------------------------------- what we receive


_LITERAL_ANNOUNCEMENT = re.compile(rb"\{[0-9]+\}\r\n")


def lines_end(data: bytes, start: int, most: int) -> int:
    """Where to cut `data[start:]`: after its `most`-th LF, or after a literal announcement.

    Cutting at `{N}CRLF` (RFC 3501 section 4.3) lets the caller hand the literal over whole
    instead of scanning a message body for line ends it does not need. The caller slices by
    offsets, so a received chunk holding many messages is never copied once per message.
    """
    literal = _LITERAL_ANNOUNCEMENT.search(data, start)
    limit = len(data) if literal is None else literal.end()
    if data.count(b"\n", start, limit) <= most:
        return limit
    end = start
    for _ in range(most):
        end = data.index(b"\n", end) + 1
    return end


def response_code(text: bytes) -> str | None:
    """The response code atom of a status text (`[AUTHENTICATIONFAILED] ...`), upper-cased."""
    match = _CODE.match(text)
    return match.group(1).decode("ascii").upper() if match else None


def capabilities(data: Iterable[Part], text: bytes, *, bare: bool) -> frozenset[str] | None:
    """Capabilities from a reply; `bare` when data lines hold only the capability list.

    Returns None when the reply carried none (then ask with CAPABILITY).
    """
    found: list[bytes] = []
    for line in data:
        if not isinstance(line, bytes):
            continue
        if bare:
            found.append(line)
        elif line.upper().startswith(b"CAPABILITY "):
            found.append(line[len(b"CAPABILITY ") :])
        elif match := _CAPABILITY_CODE.search(line):
            found.append(match.group(1))
    if match := _CAPABILITY_CODE.search(text):
        found.append(match.group(1))
    if not found:
        return None
    return frozenset(atom.decode("ascii", "replace").upper() for atom in b" ".join(found).split())


def uidvalidity(data: Iterable[Part]) -> int | None:
    """UIDVALIDITY from a SELECT/EXAMINE reply (RFC 3501 section 7.1)."""
    for line in data:
        if isinstance(line, bytes) and (match := _UIDVALIDITY.search(line)):
            return int(match.group(1))
    return None


def search_uids(data: Iterable[Part]) -> list[int]:
    """UIDs from the SEARCH lines aioimaplib routed to a UID SEARCH (prefix already cut)."""
    uids: set[int] = set()
    for line in data:
        if not isinstance(line, bytes):
            continue
        for atom in line.split():
            if atom.isdigit():
                uids.add(int(atom))
            elif atom.upper() not in (b"*", b"SEARCH"):
                raise ProtocolError(f"unexpected SEARCH data {printable(line)}")
    return sorted(uids)


@dataclass(frozen=True, slots=True)
class Fetched:
    """One FETCH response: its UID (None if absent) and its items by upper-cased name."""

    uid: int | None
    items: dict[str, Value]

    def number(self, name: str) -> int | None:
        value = self.items.get(name)
        return int(value) if isinstance(value, bytes) and value.isdigit() else None

    def body(self, section: str, origin: int | None = None) -> bytes | None:
        """The data of `BODY[section]` (with `<origin>` if partial); None if absent or NIL."""
        keys = [f"BODY[{section}]"]
        if origin is not None:
            keys.insert(0, f"BODY[{section}]<{origin}>")
        for key in keys:
            if key in self.items:
                value = self.items[key]
                if isinstance(value, list):
                    raise ProtocolError(f"{key} is a list")
                return value  # NIL: Dovecot's answer for a message expunged meanwhile
        return None

    def prefixed(self, prefix: str) -> bytes | None:
        """The first string item whose name starts with `prefix` (sections the server echoes)."""
        for key, value in self.items.items():
            if key.startswith(prefix) and isinstance(value, bytes):
                return value
        return None


def parse_fetches(data: Sequence[Part]) -> list[Fetched]:
    """Every FETCH response among `data`, in any item order; other lines are skipped."""
    return [
        listing_entry(group) or body_entry(group) or fetched_items(group, skip)
        for group, skip in tokens.groups(data, _FETCH_START)
    ]


def fetched_items(group: Sequence[Part], skip: int) -> Fetched:
    """One FETCH response's parts, tokenized; `skip` is the length of its `[* ]N FETCH `."""
    values = tokens.tokens(group, skip)
    if not values or not isinstance(values[0], list):
        raise ProtocolError(f"malformed FETCH response {printable(group[0])}")
    items = tokens.pairs(values[0])
    uid = items.get("UID")
    return Fetched(int(uid) if isinstance(uid, bytes) and uid.isdigit() else None, items)


def listing_entry(group: Sequence[Part]) -> Fetched | None:
    """A listing's FETCH response (`LISTING_ITEMS`) in the order servers send it, read with
    one match; None for any other shape, which `fetched_items` then tokenizes. A login lists
    every message, and the tokenizer was a quarter of that work."""
    if len(group) != 3 or group[2] != b")" or isinstance(group[1], bytes):
        return None
    match = _LISTING_RESPONSE.match(group[0])
    if match is None or int(match[5]) != len(group[1]):
        return None
    uid, size, date, section = match[1], match[2], match[3], match[4]
    items: dict[str, Value] = {"UID": uid, "RFC822.SIZE": size, "INTERNALDATE": date}
    items[section.decode("ascii").upper()] = bytes(group[1])
    return Fetched(int(uid), items)


def body_entry(group: Sequence[Part]) -> Fetched | None:
    """A `UID n BODY[]<origin> {size}` response (a last-octets read, a piece of a body)
    read with one match; None for any other shape, which `fetched_items` then tokenizes."""
    if len(group) != 3 or group[2] != b")" or isinstance(group[1], bytes):
        return None
    match = _BODY_RESPONSE.match(group[0])
    if match is None or int(match[3]) != len(group[1]):
        return None
    items: dict[str, Value] = {"UID": match[1], match[2].decode("ascii").upper(): bytes(group[1])}
    return Fetched(int(match[1]), items)


@dataclass(frozen=True, slots=True)
class Listed:
    """One LIST response: its attributes (upper-cased) and the name as the server sent it."""

    attributes: frozenset[str]
    name: bytes


def parse_list(data: Sequence[Part]) -> list[Listed]:
    """Every LIST response among `data` (RFC 3501 7.2.2, RFC 6154 attributes)."""
    result: list[Listed] = []
    for group, skip in tokens.groups(data, _LIST_START):
        values = tokens.tokens(group, skip)  # from the attribute list on
        if len(values) < 3 or not isinstance(values[0], list) or not isinstance(values[2], bytes):
            raise ProtocolError(f"malformed LIST response {printable(group[0])}")
        names = {a.decode("ascii", "replace").upper() for a in values[0] if isinstance(a, bytes)}
        result.append(Listed(frozenset(names), values[2]))
    return result


def internal_date(value: Value) -> datetime | None:
    """An INTERNALDATE (`"21-Nov-2025 22:51:57 +0000"`, RFC 3501 9) as an aware datetime."""
    if not isinstance(value, bytes):
        return None
    match = _INTERNALDATE.fullmatch(value)
    if match is None:
        return None
    day, month_name, year, hour, minute, second, offset = match.groups()
    month = _MONTH_NUMBERS.get(month_name.lower())
    if month is None:
        return None
    try:
        return datetime(
            int(year), month, int(day), int(hour), int(minute), int(second), tzinfo=_zone(offset)
        )
    except ValueError:
        return None


@lru_cache(maxsize=64)
def _zone(offset: bytes) -> timezone:
    """The zone of a `+hhmm` offset; cached since a mailbox's dates share a handful of them."""
    delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
    return timezone(-delta if offset.startswith(b"-") else delta)  # ValueError beyond 24h


def message_id(header: bytes | None) -> str | None:
    """The Message-ID from a `HEADER.FIELDS (MESSAGE-ID)` block, unfolded; None if absent."""
    if not header:
        return None
    if b"\n " in header or b"\n\t" in header:  # only a folded header needs the substitution
        header = _FOLDED.sub(b" ", header)
    match = _MESSAGE_ID.search(header)
    if match is None:
        return None
    return match.group(1).strip().decode("ascii", "replace")[:998] or None


# ------------------------------------------------ what an incremental listing reads


_UIDNEXT = re.compile(rb"\[UIDNEXT ([0-9]{1,10})\]", re.IGNORECASE)
_HIGHESTMODSEQ = re.compile(rb"\[HIGHESTMODSEQ ([0-9]{1,19})\]", re.IGNORECASE)
_EXISTS = re.compile(rb"\A(?:\* )?([0-9]{1,10}) EXISTS\s*\Z", re.IGNORECASE)
_ESEARCH_ALL = re.compile(rb"\bALL ([0-9:,]{1,1000000})(?: |\Z)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Status:
    """What SELECT/EXAMINE said about the folder (RFC 3501 7.3.1, 7.1; RFC 7162 3.1.2.1).

    `modseq` is None when the server keeps no mod-sequences (no CONDSTORE, or NOMODSEQ).
    """

    exists: int | None
    uidnext: int | None
    modseq: int | None


def selected_status(data: Iterable[Part]) -> Status:
    exists = uidnext = modseq = None
    for line in data:
        if not isinstance(line, bytes):
            continue
        if match := _EXISTS.match(line):
            exists = int(match.group(1))
        elif match := _UIDNEXT.search(line):
            uidnext = int(match.group(1))
        elif match := _HIGHESTMODSEQ.search(line):
            modseq = int(match.group(1))
    return Status(exists, uidnext, modseq)


def esearch_all(data: Iterable[Part], *, limit: int) -> list[tuple[int, int]]:
    """The `ALL` set of an ESEARCH response (RFC 4731 3.1) as sorted, merged UID ranges.

    Ranges, not numbers: 100,000 surviving UIDs are a few ranges. A set naming more than
    `limit` UIDs (the folder's EXISTS) cannot be true, and is refused before expanding.
    """
    ranges: list[tuple[int, int]] = []
    answered = False
    for line in data:
        if not isinstance(line, bytes) or not line.upper().startswith(b"(TAG "):
            continue
        answered = True
        match = _ESEARCH_ALL.search(line)
        if match is None:
            continue
        for item in match.group(1).split(b","):
            first, _, last = item.partition(b":")
            if not first.isdigit() or (last and not last.isdigit()):
                raise ProtocolError(f"malformed ESEARCH set {printable(line)}")
            low, high = sorted((int(first), int(last or first)))
            ranges.append((low, high))
    if not answered:  # no `* ESEARCH (TAG ...)` line at all is not "nothing matched"
        raise ProtocolError("UID SEARCH RETURN answered without an ESEARCH response")
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for low, high in ranges:
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    if sum(high - low + 1 for low, high in merged) > limit:
        raise ProtocolError("ESEARCH names more UIDs than the folder holds")
    return merged


def flags(fetched: Fetched) -> frozenset[str] | None:
    """A FETCH response's FLAGS, upper-cased (flags and keywords match case-insensitively
    in SEARCH, RFC 3501 6.4.4); None if the response carried none."""
    value = fetched.items.get("FLAGS")
    if not isinstance(value, list):
        return None
    return frozenset(f.decode("ascii", "replace").upper() for f in value if isinstance(f, bytes))
