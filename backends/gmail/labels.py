"""Gmail labels: the maildrop label, a MOVE target, a KEYWORD label created when missing.

This module owns the mapping from configured names to label ids (users.labels.list): a
system label is named by its id (INBOX, SPAM, STARRED ...), a user label by its name or its
id; names compare without case, as Gmail refuses two labels differing only in case. A
keyword label is created (users.labels.create) the first time a disposition needs it, shown
in neither the label list nor the message list, so it does not clutter the user's view.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from backends.gmail.transport import Transport
from popbridge.errors import BackendFailure

logger = logging.getLogger(__name__)

USER_PATH = "/gmail/v1/users/me"
# System labels that mark a message rather than file it: removing the maildrop label from a
# message that has only these leaves it nowhere but "All Mail".
MARKS = frozenset({"UNREAD", "STARRED", "IMPORTANT"})


@dataclass(frozen=True, slots=True)
class Label:
    id: str
    name: str
    system: bool


def is_mark(label_id: str) -> bool:
    return label_id in MARKS or label_id.startswith("CATEGORY_")


class Labels:
    """The user's labels as last read."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self.found: list[Label] = []

    async def load(self) -> None:
        reply = await self._transport.call("GET", f"{USER_PATH}/labels", "labels.list")
        entries = reply.get("labels") if isinstance(reply, dict) else None
        if not isinstance(entries, list):
            raise BackendFailure("labels.list: no labels in the reply")
        self.found = [
            Label(str(e["id"]), str(e.get("name") or e["id"]), e.get("type") == "system")
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("id"), str) and e["id"]
        ]

    def find(self, name: str) -> Label | None:
        """The label with this id, or else this name (compared without case)."""
        for label in self.found:
            if label.id == name:
                return label
        folded = name.casefold()
        return next((label for label in self.found if label.name.casefold() == folded), None)

    async def ensure(self, name: str) -> Label:
        """The label named `name`, created if it does not exist yet."""
        found = self.find(name)
        if found is not None:
            return found
        body = {
            "name": name,
            "labelListVisibility": "labelHide",
            "messageListVisibility": "hide",
        }
        reply = await self._transport.call(
            "POST", f"{USER_PATH}/labels", "labels.create", body=body
        )
        if not isinstance(reply, dict) or not isinstance(reply.get("id"), str):
            raise BackendFailure("labels.create: no id in the reply")
        label = Label(reply["id"], name, False)
        logger.info("created the label %r (%s)", name, label.id)
        self.found.append(label)
        return label
