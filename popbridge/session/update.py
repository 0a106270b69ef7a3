"""The UPDATE state: the only step that changes anything upstream (RFC 1939 §6).

At QUIT after a transaction, the backend applies the configured disposition to exactly
the messages marked deleted, and, when the operator asked for it, marks the messages RETR
sent in full as seen (RETR itself never sets \\Seen: RFC 3501 §6.4.5 BODY.PEEK). A failure
is reported as `[SYS/TEMP]` and changes nothing else; a session that ends any other way
never gets here.
"""

from __future__ import annotations

import logging
from typing import Final

from popbridge.contract import Disposition, DispositionKind, Mailbox
from popbridge.errors import BridgeError
from popbridge.session.services import SessionPolicy
from popbridge.session.snapshot import Snapshot

SEEN: Final = Disposition(DispositionKind.SEEN)


async def apply_update(
    mailbox: Mailbox, snapshot: Snapshot, retrieved: set[str], policy: SessionPolicy,
    log: logging.LoggerAdapter[logging.Logger],
) -> int:  # fmt: skip
    """Dispose of exactly the DELE'd messages; returns how many could not be."""
    deleted = snapshot.deleted_identities()
    if deleted:
        try:
            result = await mailbox.dispose(deleted, policy.disposition)
        except BridgeError as error:
            log.warning("UPDATE failed: %r", error)
            return len(deleted)
        if result.failed:
            log.warning("UPDATE: %d not disposed: %s", len(result.failed), result.detail)
            return len(result.failed)
        log.info("UPDATE: %d disposed", len(deleted))
    if policy.mark_seen_on_retr:
        await _mark_seen(mailbox, retrieved - set(deleted), log)
    return 0


async def _mark_seen(
    mailbox: Mailbox, seen: set[str], log: logging.LoggerAdapter[logging.Logger]
) -> None:
    """The optional "RETR sets \\Seen" policy, applied at UPDATE, never at RETR."""
    if not seen:
        return
    try:
        result = await mailbox.dispose(sorted(seen), SEEN)
        if result.failed:
            log.warning("marking retrieved messages seen: %s", result.detail)
    except BridgeError as error:
        log.warning("marking retrieved messages seen failed: %r", error)
