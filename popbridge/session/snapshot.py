"""The maildrop as one POP3 session sees it: a numbered snapshot taken at login.

RFC 1939 section 4 numbers the messages 1..n when the maildrop is opened, and the numbers
never change during the session, even if another client expunges upstream (conformance
P-2.8, P-3.10). This module owns that numbering, the UIDL of each message, and the set
of numbers marked deleted. It touches nothing upstream: DELE and RSET only change the
set, and the session's UPDATE step is the only place that acts on it (RFC 1939 section 6).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from popbridge.contract import RemoteMessage, with_exact_sizes


@dataclass(slots=True)  # not frozen: a login builds one per message, and frozen costs 3x
class Entry:
    """One numbered message of the snapshot (never changed after it is built)."""

    number: int
    message: RemoteMessage
    uidl: str

    @property
    def size(self) -> int:
        return self.message.size


class NoSuchMessage(LookupError):
    """The number is out of range or marked deleted; the text is safe for the wire."""


class Snapshot:
    """Numbered messages, their UIDLs, and the numbers marked deleted."""

    def __init__(self, messages: Sequence[RemoteMessage], uidls: Sequence[str]) -> None:
        if len(messages) != len(uidls):
            raise ValueError("one UIDL per message")
        if len(set(uidls)) != len(uidls):
            raise ValueError("UIDLs must be unique within a maildrop (RFC 1939 section 7)")
        self._entries = [
            Entry(number, message, uidl)
            for number, (message, uidl) in enumerate(zip(messages, uidls, strict=True), 1)
        ]
        self._deleted: set[int] = set()
        self._positions: dict[str, int] | None = None  # identity -> index, once measuring

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, number: int) -> Entry:
        """The live entry `number`; `NoSuchMessage` if absent or deleted (RFC 1939 section 5)."""
        if not 1 <= number <= len(self._entries):
            raise NoSuchMessage("no such message")
        if number in self._deleted:
            raise NoSuchMessage("message already deleted")
        return self._entries[number - 1]

    def live(self) -> list[Entry]:
        """Entries not marked deleted, in number order."""
        return [e for e in self._entries if e.number not in self._deleted]

    def stat(self) -> tuple[int, int]:
        """(count, octets) of the messages not marked deleted (RFC 1939 section 5 STAT)."""
        live = self.live()
        return len(live), sum(e.size for e in live)

    def provisional(self, number: int | None = None) -> list[str]:
        """Identities of live messages (all, or just `number`) whose size is not yet exact."""
        entries = self.live() if number is None else [self.get(number)]
        return [e.message.identity for e in entries if not e.message.exact]

    def measured(self, sizes: Mapping[str, int]) -> None:
        """Replace listed sizes by the exact ones found since (identity -> octets); the
        cost is that of `sizes`, not of the maildrop (a RETR measures one at a time)."""
        if self._positions is None:
            self._positions = {e.message.identity: i for i, e in enumerate(self._entries)}
        for identity, size in sizes.items():
            index = self._positions.get(identity)
            if index is None:
                continue
            entry = self._entries[index]
            (message,) = with_exact_sizes([entry.message], {identity: size})
            self._entries[index] = dataclasses.replace(entry, message=message)

    def exact(self) -> bool:
        """True when every size a client could be told is exact."""
        return all(e.message.exact for e in self._entries)

    def delete(self, number: int) -> None:
        self.get(number)
        self._deleted.add(number)

    def reset(self) -> None:
        """RSET: unmark every deleted message."""
        self._deleted.clear()

    def deleted_identities(self) -> list[str]:
        """Identities of the messages marked deleted, for the UPDATE step."""
        return [self._entries[n - 1].message.identity for n in sorted(self._deleted)]
