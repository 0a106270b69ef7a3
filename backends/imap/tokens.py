"""The IMAP response tokenizer: a response's parts into atoms, strings, NIL and lists.

aioimaplib hands over a response as text lines (`bytes`) with each literal's payload as a
separate `bytearray` (RFC 3501 section 4.3). This module turns such parts into values, one
compiled expression per text part so the work runs in C rather than a per-byte loop, and
refuses malformed input with `ProtocolError` (naming what was wrong) in time linear in its
length. `backends.imap.wire` builds its FETCH and LIST parsers on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from popbridge.errors import BackendFailure

Part = bytes | bytearray
Value = bytes | None | list["Value"]

# One token of a text part per match, so tokenizing runs in C (it was a per-byte Python
# loop), spaces before it skipped. Whatever starts no token takes the rest of the part along,
# leaving the group empty, so hostile input is never rescanned; `_stray` then says what it
# was. Loops are unrolled (`a*(?:b a*)*`): the engine is slow at alternation inside a loop.
_TOKEN = re.compile(
    rb"""(?:[ ]*+(?:(
          (?:[^ ()"\[\]{]|\[[^\]]*\]) [^ ()"\[\]]* (?:\[[^\]]*\] [^ ()"\[\]]*)*  # atom, [sections]
        | [()]
        | "[^"\\]*(?:\\.[^"\\]*)*"  # quoted string
        | \{[0-9]{1,18}\+?\}\Z  # literal announcement: ends the part; int() stays cheap
        ) | .+)  # a stray byte, and the rest of the part
      | [ ]+\Z)  # trailing spaces
    """,
    re.DOTALL | re.VERBOSE,
)
# What a token's first byte makes it: 0 atom, 1 "(", 2 ")", 3 quoted, 4 literal.
_KIND = tuple({40: 1, 41: 2, 34: 3, 123: 4}.get(byte, 0) for byte in range(256))
_ESCAPE = re.compile(rb"\\(.)")
_NIL = frozenset({b"NIL", b"NIl", b"NiL", b"Nil", b"nIL", b"nIl", b"niL", b"nil"})


class ProtocolError(BackendFailure):
    """The upstream sent something this backend cannot parse."""


def printable(data: Part, limit: int = 200) -> str:
    """Server text made safe for one log line: ASCII, no control characters, bounded."""
    text = bytes(data[:limit]).decode("ascii", "replace")
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def groups(data: Sequence[Part], start: re.Pattern[bytes]) -> Iterator[tuple[list[Part], int]]:
    """Split aioimaplib's part list into responses, each with the length of its `start` match."""
    group: list[Part] = []
    skip = 0
    for part in data:
        if isinstance(part, bytes) and (match := start.match(part)):
            if group:
                yield group, skip
            group, skip = [part], match.end()
        elif group:
            group.append(part)
    if group:
        yield group, skip


def tokens(parts: Sequence[Part], skip: int = 0) -> list[Value]:
    """Parse a response's parts into values: atoms and strings as bytes, NIL as None, lists."""
    stack: list[list[Value]] = [[]]
    index, count = 0, len(parts)
    while index < count:
        part = parts[index]
        index += 1
        if not isinstance(part, bytes):
            raise ProtocolError("literal without announcement")
        if part == b")" and len(stack) > 1:  # the usual part after a literal: skip the regex
            done = stack.pop()
            stack[-1].append(done)
            continue
        literal = _scan(part, stack, skip if index == 1 else 0)  # a known prefix, not copied
        if literal is not None:
            if index >= count or isinstance(parts[index], bytes):
                raise ProtocolError("announced literal missing")
            payload = parts[index]
            if len(payload) != literal:
                raise ProtocolError("literal of the wrong length")
            stack[-1].append(bytes(payload))
            index += 1
    if len(stack) != 1:
        raise ProtocolError("unbalanced parentheses")
    return stack[0]


def _scan(text: bytes, stack: list[list[Value]], pos: int = 0) -> int | None:
    """Tokenize `text[pos:]` into `stack`; returns the size of a literal announced at its end."""
    out = stack[-1]
    for token in _TOKEN.findall(text, pos):
        kind = _KIND[token[0]] if token else 5  # ints compare faster than one-byte bytes
        if not kind:
            out.append(None if token in _NIL else token)
        elif kind == 1:
            out = []
            stack.append(out)
        elif kind == 2:
            if len(stack) == 1:
                raise ProtocolError("unbalanced parentheses")
            done = stack.pop()
            out = stack[-1]
            out.append(done)
        elif kind == 3:
            quoted = token[1:-1]
            # 0x5C is a backslash; an int needle is much cheaper than `b"\\" in quoted`.
            out.append(_ESCAPE.sub(rb"\1", quoted) if 0x5C in quoted else quoted)
        elif kind == 4:
            return int(token[1:-1].rstrip(b"+"))
        elif (error := _stray(text, pos)) is not None:
            raise error
    return None


def _stray(text: bytes, pos: int) -> ProtocolError | None:
    """The error for the byte of `text` that starts no token; None if it was trailing spaces."""
    for match in _TOKEN.finditer(text, pos):
        if match[1] is None and (rest := match[0].lstrip(b" ")):
            if rest.startswith(b'"'):
                return ProtocolError("unterminated quoted string")
            if rest.startswith(b"{"):
                return ProtocolError("malformed literal")
            return ProtocolError(f"unexpected {printable(rest[:20])!r}")
    return None


def pairs(values: list[Value]) -> dict[str, Value]:
    """FETCH's `name value name value ...` list as a dict keyed by upper-cased name."""
    if len(values) % 2:
        raise ProtocolError("odd number of FETCH items")
    items: dict[str, Value] = {}
    remaining = iter(values)
    for name in remaining:
        if not isinstance(name, bytes):
            raise ProtocolError("FETCH item name is not an atom")
        # the length is even, so a value always follows its name
        items[name.decode("ascii", "replace").upper()] = next(remaining)
    return items
