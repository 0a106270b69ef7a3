"""A byte budget shared by everything that holds message bytes ahead of the client.

The session's lookahead and a backend's read-ahead both keep bytes the client has not asked
for yet; one process-wide count bounds them together, so the memory a busy process holds
ahead stays fixed however many sessions read at once.
"""

from __future__ import annotations


class Budget:
    """Bytes held ahead by all sessions of this process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def available(self) -> int:
        return max(self.limit - self.used, 0)
