"""Each upstream mailbox's last listing, kept for the next login (`ListingMemory`).

A backend that lists incrementally starts from the state saved here; every backend reuses
the exact sizes it measured. This in-memory implementation serves one process; the SQL
stores keep the same state durably so restarts and other instances share it.
"""

from __future__ import annotations

from typing import Protocol

from popbridge.contract import ListingMemory, ListingState


class ListingMemories(Protocol):
    """Hands out the memory of one account's maildrop."""

    def for_account(self, account: str) -> ListingMemory: ...


class _AccountMemory:
    def __init__(self, states: dict[str, ListingState], account: str) -> None:
        self._states = states
        self._account = account

    async def load(self) -> ListingState | None:
        return self._states.get(self._account)

    async def save(self, state: ListingState) -> None:
        self._states[self._account] = state


class MemoryListings:
    """Listings kept in this process's memory, one per account."""

    def __init__(self) -> None:
        self._states: dict[str, ListingState] = {}

    def for_account(self, account: str) -> ListingMemory:
        return _AccountMemory(self._states, account)
