"""Maildrop locks: at most one POP3 session per account at a time (RFC 1939 section 4).

The lock is taken only after the credentials were accepted, so a second session learns
`[IN-USE]` only with a correct password (RFC 2449 section 8.1.2), and it is keyed by the
canonical account name, not the raw USER string (conformance P-7.3). This in-process
implementation serves one bridge process; a shared store can implement `MaildropLocks`
for several processes.
"""

from __future__ import annotations

from typing import Protocol


class Lease(Protocol):
    """A held lock; `release` is idempotent."""

    async def release(self) -> None: ...


class MaildropLocks(Protocol):
    async def try_acquire(self, key: str) -> Lease | None:
        """The lease, or None when another session holds the key."""
        ...


class _LocalLease:
    def __init__(self, owner: LocalLocks, key: str) -> None:
        self._owner = owner
        self._key: str | None = key

    async def release(self) -> None:
        if self._key is not None:
            self._owner.held.discard(self._key)
            self._key = None


class LocalLocks:
    """Locks held in this process's memory."""

    def __init__(self) -> None:
        self.held: set[str] = set()

    async def try_acquire(self, key: str) -> Lease | None:
        if key in self.held:
            return None
        self.held.add(key)
        return _LocalLease(self, key)
