"""What happens upstream at QUIT: the IMAP side of POP3's UPDATE state.

This module owns the only writes the IMAP backend ever makes (conformance I-7, I-11 to I-15).
For each folder of the maildrop that holds deleted messages, it re-SELECTs that folder
read-write, refuses to act if its UIDVALIDITY changed, touches exactly the UIDs it was given
(UID commands, exact UID sets, never plain EXPUNGE or CLOSE), and then verifies with UID
SEARCH which messages are still not done, reporting those as failed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from backends.imap import wire
from backends.imap.connection import Connection
from backends.imap.folders import Folder, Folders
from popbridge.contract import DisposeResult, Disposition, DispositionKind
from popbridge.errors import BackendFailure, BackendUnavailable

logger = logging.getLogger(__name__)

# UIDs per command: UID EXPUNGE and UID MOVE answer with one untagged line per message.
BATCH = 500


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to act on one batch of UIDs, and the UID SEARCH keys of those not yet done."""

    act: Callable[[list[int]], Awaitable[bool]]  # False: the server refused a command
    pending: tuple[str, ...]
    done: str


async def dispose(
    connection: Connection, folders: Folders, identities: Collection[str], how: Disposition
) -> DisposeResult:
    """Apply `how` to `identities`, each in its own folder; vanished ones count as done."""
    owned: dict[int, dict[int, str]] = {}
    failed: set[str] = set()
    for identity in identities:
        located = folders.locate(identity)
        if located is None:
            failed.add(identity)
        else:
            owned.setdefault(located[0].index, {})[located[1]] = identity
    details = ["identities from another UIDVALIDITY"] if failed else []
    for folder in folders:
        mine = owned.get(folder.index)
        if not mine:
            continue
        try:
            survivors, detail = await _dispose_uids(connection, folder, sorted(mine), how)
        except (BackendUnavailable, BackendFailure) as exc:
            survivors, detail = list(mine), f"not verified: {exc}"
        failed.update(mine[uid] for uid in survivors)
        if survivors:
            details.append(detail if not folders.merged else f"{folder.name}: {detail}")
    detail = "; ".join(details)
    if failed:
        logger.warning(
            "%s: %d message(s) not %s: %s", connection.peer, len(failed), how.kind.value, detail
        )
    return DisposeResult(frozenset(failed), detail if failed else "")


async def _dispose_uids(
    connection: Connection, folder: Folder, uids: list[int], how: Disposition
) -> tuple[list[int], str]:
    selected = await connection.select(read_only=False, folder=folder.name)
    if selected.uidvalidity != folder.uidvalidity:
        # RFC 3501 2.3.1.1: the UIDs may now name other messages (conformance I-7).
        return uids, "UIDVALIDITY changed since the listing; nothing touched"
    if selected.read_only:
        return uids, "the folder opened read-only; nothing touched"
    plan = await _plan(connection, how, folder)
    if isinstance(plan, str):
        return uids, plan
    refused: list[int] = []
    for batch in wire.batches(uids, BATCH):
        if not await plan.act(batch):
            refused.extend(batch)
    # A refused command changed nothing (RFC 3501 7.1.2, 7.1.3; UIDs that no longer exist are
    # no reason to refuse, 6.4.8), whatever the verifying SEARCH says: GNU Mailutils imap4d
    # refuses a keyword it cannot keep, and then finds no message for NOT KEYWORD.
    left = sorted(set(await _pending(connection, uids, plan.pending)) | set(refused))
    return left, f"{len(left)} of {len(uids)} message(s) not {plan.done}"


async def _plan(connection: Connection, how: Disposition, source: Folder) -> _Plan | str:
    """The plan for `how`, or why there is none (then nothing is touched)."""
    match how.kind:
        case DispositionKind.EXPUNGE:
            return _expunge(connection)
        case DispositionKind.TRASH:
            trash = await _trash_folder(connection)
            if trash is None:
                return "no \\Trash special-use folder (RFC 6154); nothing touched"
            return _transfer(connection, trash, source)
        case DispositionKind.MOVE:
            if not how.folder:
                return "no target folder configured; nothing touched"
            return _transfer(connection, wire.quote(wire.encode_mailbox(how.folder)), source)
        case DispositionKind.SEEN:
            return _Plan(_flagger(connection, "\\Seen"), ("UNSEEN",), "flagged \\Seen")
        case DispositionKind.KEYWORD:
            keyword = how.keyword or ""
            if not wire.is_keyword(keyword):
                return f"keyword {keyword!r} is not an IMAP atom; nothing touched"
            return _Plan(
                _flagger(connection, keyword), ("NOT", "KEYWORD", keyword), "given the keyword"
            )
    return f"unsupported disposition {how.kind}"


def _expunge(connection: Connection) -> _Plan:
    """\\Deleted then UID EXPUNGE of exactly our UIDs (RFC 4315 2.1; conformance I-11, I-12)."""
    uidplus = "UIDPLUS" in connection.capabilities
    if not uidplus:
        # Plain EXPUNGE or CLOSE would also remove messages other clients flagged \Deleted
        # (RFC 3501 6.4.2-6.4.3); the flag alone already hides them from our listings.
        logger.warning("%s: no UIDPLUS: leaving \\Deleted set without expunging", connection.peer)
    flag = _flagger(connection, "\\Deleted")

    async def act(batch: list[int]) -> bool:
        flagged = await flag(batch)
        if uidplus:
            return await _attempt(connection, "EXPUNGE", wire.uid_set(batch)) and flagged
        return flagged

    return _Plan(act, () if uidplus else ("NOT", "DELETED"), "expunged")


def _transfer(connection: Connection, target: str, source: Folder) -> _Plan | str:
    """UID MOVE to `target` (RFC 6851), else UID COPY + \\Deleted + UID EXPUNGE."""
    if _same_mailbox(target, source.argument):
        return "the target folder is the folder the messages are in; nothing touched"
    move = "MOVE" in connection.capabilities
    uidplus = "UIDPLUS" in connection.capabilities
    flag = _flagger(connection, "\\Deleted")

    async def act(batch: list[int]) -> bool:
        uids = wire.uid_set(batch)
        if move:
            # RFC 6851 3.3: each message is either moved or unaffected, never lost.
            return await _attempt(connection, "MOVE", uids, target)
        if not await _attempt(connection, "COPY", uids, target) or not await flag(batch):
            return False
        return await _attempt(connection, "EXPUNGE", uids) if uidplus else True

    if not (move or uidplus):
        logger.warning("%s: no MOVE/UIDPLUS: originals stay flagged \\Deleted", connection.peer)
    return _Plan(act, () if move or uidplus else ("NOT", "DELETED"), f"moved to {target}")


def _flagger(connection: Connection, flag: str) -> Callable[[list[int]], Awaitable[bool]]:
    async def store(batch: list[int]) -> bool:
        # .SILENT: no FETCH per message in the reply (RFC 3501 6.4.6).
        return await _attempt(
            connection, "STORE", wire.uid_set(batch), "+FLAGS.SILENT", f"({flag})"
        )

    return store


async def _attempt(connection: Connection, name: str, *args: str) -> bool:
    """A UID command whose NO is logged, not raised: the final UID SEARCH tells the outcome."""
    reply = await connection.run(name, *args, uid=True, check=False)
    if not reply.ok:
        logger.warning("%s: UID %s refused: %s", connection.peer, name, reply.describe())
    return reply.ok


async def _pending(connection: Connection, uids: list[int], keys: tuple[str, ...]) -> list[int]:
    """Which of `uids` still match `keys` (conformance I-14: verify, don't trust replies)."""
    left: list[int] = []
    for batch in wire.batches(uids, BATCH):
        reply = await connection.run("SEARCH", "UID", wire.uid_set(batch), *keys, uid=True)
        wanted = set(batch)
        left.extend(uid for uid in wire.search_uids(reply.data) if uid in wanted)
    return left


async def _trash_folder(connection: Connection) -> str | None:
    """The `\\Trash` special-use folder as a quoted name (RFC 6154 2), by attribute not name."""
    args = ['""', '"*"']
    if "SPECIAL-USE" in connection.capabilities:
        args += ["RETURN", "(SPECIAL-USE)"]  # RFC 6154 5.1
    reply = await connection.run("LIST", *args)
    for entry in wire.parse_list(reply.data):
        if "\\TRASH" in entry.attributes:
            try:
                return wire.quote(entry.name.decode("ascii"))
            except ValueError:
                logger.warning("%s: trash folder name is not quotable", connection.peer)
                return None
    return None


def _same_mailbox(left: str, right: str) -> bool:
    """Mailbox names compare exactly, except INBOX, which is case-insensitive (RFC 3501 5.1)."""
    return left == right or left.upper() == right.upper() == '"INBOX"'
