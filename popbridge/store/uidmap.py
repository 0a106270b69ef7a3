"""The persistent UID map's rules, without I/O: which UIDL each listed message gets.

RFC 1939 section 7 wants a message's unique-id to persist across sessions and never to be
reused in the maildrop. A backend identity can change without the message changing (an
IMAP UIDVALIDITY change, RFC 3501 section 2.3.1.1; a message moved between merged folders),
so the map remembers, per account, identity -> UIDL plus a fingerprint of the message's
hints (Message-ID, received time, size). `plan` takes the rows a store loaded for one
account and one listing, and returns the UIDLs and the row changes the store must apply in
the same transaction. First-seen messages get `uidl_for(identity)`; an unknown identity
takes over a vanished row only when the fingerprint pairs them one-to-one; anything in
doubt gets a fresh UIDL, never an old one. Fresh UIDLs that cannot be derived are minted
as `~<store epoch>.<random>`, which no derived UIDL can equal (derived ones starting with
"~" are 44 characters of base64url, without a ".").
"""

from __future__ import annotations

import binascii
import hashlib
import secrets
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Final

from popbridge.contract import RemoteMessage
from popbridge.errors import BackendFailure
from popbridge.store.uidl import is_valid_uidl, uidl_for

# A vanished message's row is forgotten after this long; until then it can be re-matched.
RETENTION: Final = 180 * 86400
# A present message's last-seen time is rewritten at most this often (bounds the writes).
TOUCH_INTERVAL: Final = 86400
_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")  # RFC 4648 section 5


@dataclass(slots=True)  # not frozen: a changed login loads one per remembered message
class Row:
    """One remembered UIDL (never changed once built). In a tombstone `identity` is None
    when no message may revive it."""

    identity: str | None
    uidl: str
    mark: str | None = None
    size: int | None = None
    seen: int = 0  # when its message was last listed, in Unix seconds


@dataclass(slots=True)
class Plan:
    """What one `assign` returns and what the store must write, in this order."""

    uidls: list[str] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)  # live identities to delete
    unbury: list[str] = field(default_factory=list)  # tombstone UIDLs to delete
    remember: list[Row] = field(default_factory=list)  # live rows to insert
    bury: list[Row] = field(default_factory=list)  # tombstones to insert
    touch: list[str] = field(default_factory=list)  # live identities listed again
    stale_sizes: list[str] = field(default_factory=list)  # measured sizes no longer valid


def mark_of(message: RemoteMessage) -> str | None:
    """A short hash of the hints that never change for a message, or None without them.

    The received time is required; the Message-ID is optional but recorded ("m" or "d"),
    because only marks with a Message-ID are strong enough to re-match a message. Stored
    marks must keep matching: this is base64url of the first 15 octets of the SHA-256 of
    "<Message-ID>\\0<Unix seconds>", written for speed (a login computes one per message).
    """
    received = message.received
    if received is None:
        return None
    if received.tzinfo is None:
        received = received.replace(tzinfo=UTC)
    message_id = message.message_id
    text = f"{message_id or ''}\0{int(received.timestamp())}"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    encoded = binascii.b2a_base64(digest[:15], newline=False).translate(_URLSAFE)
    return ("d" if message_id is None else "m") + encoded.decode("ascii")


def minter(epoch: str) -> Callable[[], str]:
    """Fresh UIDLs for one store: `~<epoch>.<96 random bits>` (26 characters)."""
    return lambda: f"~{epoch}.{secrets.token_urlsafe(12)}"


def new_epoch() -> str:
    """A store's random epoch: minted UIDLs of a lost store cannot come back in a new one."""
    return secrets.token_urlsafe(6)


def plan(
    listing: Sequence[RemoteMessage],
    live: Sequence[Row],
    tombstones: Sequence[Row],
    *,
    now: int,
    mint: Callable[[], str],
    withheld: Collection[str] = (),
) -> Plan:
    """UIDLs for `listing`, given the account's live rows and tombstones (see the docstring).

    `withheld` are identities still in the folder but not listed on purpose (hidden by the
    keyword disposition, outside the window): their rows stay theirs. A content-identical
    copy must never inherit such a UIDL, or a client that keeps mail would take the copy
    for the message it already has and never download it (RFC 1939 §7).
    """
    return _Planner(live, tombstones, now, mint).run(listing, frozenset(withheld))


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A remembered row an unknown identity might be: live, or a recent tombstone."""

    row: Row
    buried: bool


class _Planner:
    def __init__(
        self, live: Sequence[Row], tombstones: Sequence[Row], now: int, mint: Callable[[], str]
    ) -> None:
        self.live = {row.identity: row for row in live if row.identity is not None}
        self.tombs = {row.identity: row for row in tombstones if row.identity is not None}
        self.cutoff = now - RETENTION
        # Tombstones of messages listed within RETENTION (a reused identity's old owner)
        # may still be re-matched; older ones only keep their UIDL reserved.
        self.recent = [row for row in tombstones if row.seen >= self.cutoff]
        self.used = {row.uidl for row in live} | {row.uidl for row in tombstones}
        self.now = now
        self.mint = mint
        self.revived: set[str] = set()
        self.disowned: list[Row] = []
        self.out = Plan()

    def run(self, listing: Sequence[RemoteMessage], withheld: frozenset[str]) -> Plan:
        if len({m.identity for m in listing}) != len(listing):
            raise BackendFailure("the backend listed one identity twice")
        given: dict[str, str] = {}
        unknown: list[RemoteMessage] = []
        superseded: set[str] = set()
        for message in listing:
            row = self.live.get(message.identity)
            if row is not None and _conflict(row.mark, mark_of(message)):
                # The backend reuses an identity for another message (a mailbox restored
                # with an old UIDVALIDITY): the old UIDL stays with the old message.
                superseded.add(message.identity)
                unknown.append(message)
            elif row is not None:
                given[message.identity] = row.uidl
                if row.seen < self.now - TOUCH_INTERVAL:
                    self.out.touch.append(message.identity)
            elif not self._revive(message, given):
                unknown.append(message)
        present = ({m.identity for m in listing} - superseded) | withheld
        matched = self._rematch(unknown, present)
        for message in unknown:
            given[message.identity] = self._place(message, matched.get(message.identity))
        self._retire(present, {c.row.uidl for c in matched.values()}, superseded)
        self.out.uidls = [given[m.identity] for m in listing]
        _check(self.out.uidls)
        return self.out

    def _revive(self, message: RemoteMessage, given: dict[str, str]) -> bool:
        """A message back after its row was buried keeps its UIDL (same identity, same hints)."""
        tomb = self.tombs.get(message.identity)
        mark = mark_of(message)
        if tomb is None:
            return False
        if _conflict(tomb.mark, mark):
            self.disowned.append(tomb)  # the identity now names another message
            return False
        self.revived.add(tomb.uidl)
        self.out.unbury.append(tomb.uidl)
        self.out.remember.append(
            Row(message.identity, tomb.uidl, tomb.mark or mark, message.size, self.now)
        )
        given[message.identity] = tomb.uidl
        return True

    def _rematch(self, unknown: list[RemoteMessage], present: set[str]) -> dict[str, _Candidate]:
        """Unknown identity -> the remembered row of the same message, paired one-to-one.

        RFC 1939 section 7: an old UIDL may only go to the same message. A fingerprint
        held by two listed messages, or by two remembered rows (duplicates, or a twin that
        is still listed), cannot say which is which, so none of them is matched.
        """
        if not self.live and not self.recent:
            return {}  # nothing remembered to match (a first login): no fingerprint needed
        keys = {m.identity: _key(m) for m in unknown}
        wanted = Counter(key for key in keys.values() if key is not None)
        holders: dict[tuple[str | None, int | None], list[tuple[_Candidate, bool]]] = {}
        for candidate, available in self._candidates(present, wanted):
            row = candidate.row
            holders.setdefault((row.mark, row.size), []).append((candidate, available))
        matched: dict[str, _Candidate] = {}
        for identity, key in keys.items():
            if key is None:
                continue
            found = holders.get(key, [])
            if wanted[key] == 1 and len(found) == 1 and found[0][1]:
                matched[identity] = found[0][0]
        return matched

    def _candidates(
        self, present: set[str], wanted: Counter[tuple[str, int]]
    ) -> Iterator[tuple[_Candidate, bool]]:
        """Every row holding a wanted fingerprint, and whether its message is free to be
        claimed (the test comes first: a changed login walks every live row here)."""
        for identity, row in self.live.items():
            if (row.mark, row.size) in wanted:
                yield _Candidate(row, buried=False), identity not in present
        for row in self.recent:
            if (row.mark, row.size) in wanted and row.uidl not in self.revived:
                yield _Candidate(row, buried=True), True

    def _place(self, message: RemoteMessage, old: _Candidate | None) -> str:
        """Insert the row for an unknown identity: the matched row's UIDL, else a fresh one."""
        size: int | None
        if old is None:
            uidl, mark, size = self._fresh(message.identity), mark_of(message), message.size
        else:
            uidl, mark, size = old.row.uidl, old.row.mark, old.row.size
            if old.buried:
                self.out.unbury.append(uidl)
            elif old.row.identity is not None:
                self.out.forget.append(old.row.identity)
                self.out.stale_sizes.append(old.row.identity)
        self.out.remember.append(Row(message.identity, uidl, mark, size, self.now))
        return uidl

    def _fresh(self, identity: str) -> str:
        """`uidl_for(identity)` unless that string was ever given out here, else a minted one."""
        uidl = uidl_for(identity)
        while uidl in self.used:
            uidl = self.mint()
        self.used.add(uidl)
        return uidl

    def _retire(self, present: set[str], claimed: set[str], superseded: set[str]) -> None:
        """Superseded rows and rows gone past RETENTION leave the live map.

        A derived UIDL (`uidl_for(identity)`) can only ever be derived again for the same
        identity, which names the same message for ever (RFC 3501 section 2.3.1.1), so its
        row is dropped. Any other UIDL is kept as a tombstone, so it is never handed out
        again and a message that returns under its identity gets it back. A tombstone whose
        identity now names another message keeps its UIDL but loses the identity.
        """
        for identity, row in self.live.items():
            if row.uidl in claimed:
                continue
            if identity in superseded:
                self._forget(identity)
                self.out.bury.append(Row(None, row.uidl, row.mark, row.size, row.seen))
            elif identity not in present and row.seen < self.cutoff:
                self._forget(identity)
                if row.uidl != uidl_for(identity):
                    self.out.bury.append(row)
        for tomb in self.disowned:
            if tomb.uidl not in claimed:
                self.out.unbury.append(tomb.uidl)
                self.out.bury.append(Row(None, tomb.uidl, tomb.mark, tomb.size, tomb.seen))

    def _forget(self, identity: str) -> None:
        self.out.forget.append(identity)
        self.out.stale_sizes.append(identity)


def _key(message: RemoteMessage) -> tuple[str, int] | None:
    """The re-match key: only marks that include a Message-ID, together with the size."""
    mark = mark_of(message)
    return (mark, message.size) if mark is not None and mark.startswith("m") else None


def _conflict(remembered: str | None, listed: str | None) -> bool:
    """True when both marks are known and differ: certainly two different messages."""
    return remembered is not None and listed is not None and remembered != listed


def _check(uidls: list[str]) -> None:
    """RFC 1939 section 7: 1-70 characters of 0x21-0x7E, unique in the maildrop."""
    if len(set(uidls)) != len(uidls) or not all(is_valid_uidl(u) for u in uidls):
        raise RuntimeError("UID map produced an invalid or duplicate UIDL")
