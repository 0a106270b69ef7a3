"""Read-ahead of whole small messages: one UID FETCH for the next few RETRs.

A POP3 client that downloads everything asks RETR 1, RETR 2, ... and waits for each
answer, so a bridge that sends one `UID FETCH` per RETR pays a full upstream round trip per
message (Dovecot's own imapc does exactly that). Once two retrievals in a row follow the
listing order, this module plans the next ones into the same `UID FETCH uid-set
(BODY.PEEK[])` (RFC 3501 section 6.4.5: PEEK never sets \\Seen), keeps the extra bodies
until asked for, and asks for the next batch while the client still reads the current one.
It is bounded per session (a message count and a byte budget) and per process (a shared
byte budget, so a thousand sessions cannot hold a thousand budgets), only whole messages
below the partial-fetch size are read ahead, and a body is handed out once and forgotten.
Bodies are immutable for a UID (RFC 3501 section 2.3.1.1), so a held body is never stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from popbridge.upstream.budget import Budget as Budget  # the same accounting as the core's

Key = tuple[int, int]  # (folder index, UID)

MAX_MESSAGES: Final = 32
MAX_BYTES: Final = 1 << 20
PROCESS_BYTES: Final = 64 << 20
PROCESS_BUDGET = Budget(PROCESS_BYTES)


class ReadAhead:
    """Plans batched fetches along the listing order and holds their extra bodies."""

    def __init__(
        self, *, max_messages: int = MAX_MESSAGES, max_bytes: int = MAX_BYTES,
        budget: Budget = PROCESS_BUDGET,
    ) -> None:  # fmt: skip
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._budget = budget
        self._order: list[Key] = []
        self._position: dict[Key, int] = {}
        self._sizes: dict[Key, int] = {}
        self._held: dict[Key, bytes] = {}
        self._held_bytes = 0
        self._last: Key | None = None
        self._frontier: Key | None = None  # the furthest key planned so far

    def listed(self, order: Sequence[Key], sizes: dict[Key, int]) -> None:
        """The listing the client numbers its messages by, oldest first."""
        self._order = list(order)
        self._position = {key: index for index, key in enumerate(self._order)}
        self._sizes = sizes
        self.forget()

    def take(self, key: Key) -> bytes | None:
        """The body fetched ahead for `key`, once; None if there is none."""
        body = self._held.pop(key, None)
        if body is not None:
            self._release(len(body))
            self._last = key
        return body

    def plan(self, key: Key, *, whole_limit: int) -> list[Key]:
        """The keys to fetch with `key`: just `key` unless the client reads in order."""
        sequential = self._last is not None and self._follows(self._last, key)
        self._last = key
        if not sequential:
            self._frontier = None
            return [key]
        own = self._sizes.get(key, 0)
        return [key, *self._following(key, whole_limit, self._allowance() - own)]

    def refill(self, *, whole_limit: int) -> list[Key]:
        """The next batch to fetch in the background, or [] when enough is held."""
        if self._frontier is None or len(self._held) > self._max_messages // 4:
            return []
        return self._following(self._frontier, whole_limit, self._allowance())

    def hold(self, key: Key, body: bytes) -> None:
        """Keep a body fetched ahead until `take`."""
        if key not in self._held:
            self._held[key] = body
            self._held_bytes += len(body)
            self._budget.used += len(body)

    def forget(self) -> None:
        self._release(self._held_bytes)
        self._held.clear()
        self._last = self._frontier = None

    def _allowance(self) -> int:
        return min(self._max_bytes - self._held_bytes, self._budget.available())

    def _following(self, key: Key, whole_limit: int, budget: int) -> list[Key]:
        planned: list[Key] = []
        index = self._position[key] + 1
        while index < len(self._order) and len(planned) < self._max_messages:
            following = self._order[index]
            size = self._sizes.get(following)
            if following[0] != key[0] or size is None or size > whole_limit or size > budget:
                break  # one folder per command; whole small messages only; within budget
            if following not in self._held:
                planned.append(following)
                budget -= size
            index += 1
        self._frontier = planned[-1] if planned else self._frontier
        return planned

    def _release(self, size: int) -> None:
        self._held_bytes -= size
        self._budget.used -= size

    def _follows(self, previous: Key, key: Key) -> bool:
        before, after = self._position.get(previous), self._position.get(key)
        return before is not None and after is not None and after == before + 1
