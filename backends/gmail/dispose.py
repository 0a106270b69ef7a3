"""What happens upstream at QUIT: the Gmail side of POP3's UPDATE state (RFC 1939 section 6).

This module owns the only writes the Gmail backend makes, each on at most the ids it was
given, and only on those still carrying the maildrop label when QUIT comes (one
users.messages.list of the label; another client may have filed a message away since the
listing, and then it is not ours to touch any more, and counts as done):

- expunge: users.messages.delete (permanent; needs the https://mail.google.com/ scope) for
  a message whose only labels are the maildrop's and marks (UNREAD, STARRED, IMPORTANT,
  categories); a message also filed under another label only loses the maildrop label, as
  a Gmail message is one message under all its labels. Several deletes go as one
  batchDelete (50 units instead of 10 each, at most 1,000 ids);
- trash: users.messages.trash, one call each (there is no batch form), again only for a
  message filed nowhere else (a trashed message leaves every label's view); one filed
  elsewhere too only loses the maildrop label;
- move: the target label added and the maildrop label removed in one modify;
- seen: UNREAD removed; keyword: a label (created if missing) added.

Modifies go as users.messages.batchModify (at most 1,000 ids, 50 units) where that costs
less than one messages.modify (5 units) per message. Gmail has no conditional write, so a
change by another client between our read and our write cannot be excluded; the window is
one round trip. A 404 on one message means it is gone: done.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from dataclasses import dataclass

from backends.gmail.config import FULL_SCOPE
from backends.gmail.labels import USER_PATH, Labels, is_mark
from backends.gmail.listing import describe_many, list_ids, message_path
from backends.gmail.sync import bounded
from backends.gmail.transport import NotFound, ScopeMissing, Transport
from popbridge.contract import DisposeResult, Disposition, DispositionKind
from popbridge.errors import BackendFailure, BackendUnavailable

logger = logging.getLogger(__name__)

_Ids = list[str]
BATCH_LIMIT = 1000  # users.messages.batchModify / batchDelete: at most 1,000 ids
_PAYS = 10  # batchModify (50 units) costs less than messages.modify (5 each) beyond this


@dataclass(frozen=True, slots=True)
class _Change:
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


async def dispose(
    transport: Transport, labels: Labels, label: str, identities: Collection[str],
    how: Disposition,
) -> DisposeResult:  # fmt: skip
    """Apply `how` to those of `identities` still in the label; report those not done."""
    ids = sorted(set(identities))
    if not ids:
        return DisposeResult()
    if how.kind is DispositionKind.EXPUNGE and transport.settings.scope != "full":
        detail = f'expunge needs the {FULL_SCOPE} scope (scope = "full"); nothing touched'
        logger.error("%d message(s) not deleted: %s", len(ids), detail)
        return DisposeResult(frozenset(ids), detail)
    try:
        present = set(await list_ids(transport, [label]))
        todo = [i for i in ids if i in present]
        if len(todo) < len(ids):
            logger.info("%d message(s) left the maildrop since the listing: not touched",
                        len(ids) - len(todo))  # fmt: skip
        failed = await _apply(transport, labels, label, todo, how)
    except ScopeMissing as exc:
        logger.error("not disposed: %s (re-authorize with the scope the disposition needs)", exc)
        return DisposeResult(frozenset(ids), str(exc))
    except (BackendUnavailable, BackendFailure) as exc:
        logger.warning("%d message(s) not disposed: %s", len(ids), exc)
        return DisposeResult(frozenset(ids), f"not verified: {exc}")
    if failed:
        logger.warning("%d of %d message(s) not %s", len(failed), len(ids), how.kind.value)
        return DisposeResult(frozenset(failed), f"{len(failed)} message(s) not done")
    return DisposeResult()


async def _apply(
    transport: Transport, labels: Labels, label: str, ids: list[str], how: Disposition
) -> set[str]:
    if not ids:
        return set()
    match how.kind:
        case DispositionKind.EXPUNGE:
            return await _expunge(transport, label, ids)
        case DispositionKind.TRASH:
            return await _trash(transport, label, ids)
        case DispositionKind.MOVE:
            target = labels.find(how.folder or "")
            if target is None:
                raise BackendFailure(f"no label named {how.folder!r}; nothing touched")
            if target.id == label:
                raise BackendFailure("the target label is the maildrop itself; nothing touched")
            return await modify(transport, ids, _Change((target.id,), (label,)))
        case DispositionKind.SEEN:
            return await modify(transport, ids, _Change(remove=("UNREAD",)))
        case DispositionKind.KEYWORD:
            keyword = await labels.ensure(how.keyword or "")
            return await modify(transport, ids, _Change(add=(keyword.id,)))
    raise BackendFailure(f"unsupported disposition {how.kind}")  # pragma: no cover


async def _split(transport: Transport, label: str, ids: list[str]) -> tuple[_Ids, _Ids]:
    """(ids filed only in the maildrop, ids also filed under another label), read now;
    messages gone or moved away in the meantime are in neither."""
    found = await describe_many(transport, ids)
    sole: _Ids = []
    shared: _Ids = []
    for identity, now in sorted(found.items()):
        if now is None or label not in now.labels:
            continue
        others = [other for other in now.labels if other != label and not is_mark(other)]
        (shared if others else sole).append(identity)
    if shared:
        logger.info("%d message(s) also filed elsewhere: only the maildrop label is removed",
                    len(shared))  # fmt: skip
    return sole, shared


async def _expunge(transport: Transport, label: str, ids: list[str]) -> set[str]:
    """Delete what is only in the maildrop; take the label off what is filed elsewhere too."""
    sole, shared = await _split(transport, label, ids)
    failed = await modify(transport, shared, _Change(remove=(label,)))
    if len(sole) > 5:  # one batchDelete (50 units) beats messages.delete (10 each)
        for start in range(0, len(sole), BATCH_LIMIT):
            await transport.call(
                "POST", f"{USER_PATH}/messages/batchDelete", "messages.batchDelete",
                body={"ids": sole[start : start + BATCH_LIMIT]},
            )  # fmt: skip
        return failed
    return failed | await _each(transport, sole, "", "messages.delete")


async def _trash(transport: Transport, label: str, ids: list[str]) -> set[str]:
    """Trash what is only in the maildrop (Gmail's Trash holds the whole message, hiding it
    from every label); take the label off what is filed elsewhere too."""
    sole, shared = await _split(transport, label, ids)
    failed = await modify(transport, shared, _Change(remove=(label,)))
    return failed | await _each(transport, sole, "trash", "messages.trash")


async def _each(
    transport: Transport, ids: list[str], action: str, what: str, body: object = None
) -> set[str]:
    """One call per message: DELETE .../{id} when `action` is "", else POST .../{id}/{action};
    a message already gone (404) is done."""

    async def one(identity: str) -> None:
        path = message_path(identity) + (f"/{action}" if action else "")
        with contextlib.suppress(NotFound):
            await transport.call("POST" if action else "DELETE", path, what, body=body)

    await bounded(ids, one, transport.settings.max_in_flight)
    return set()


async def modify(transport: Transport, ids: list[str], change: _Change) -> set[str]:
    """Add and remove labels: batchModify in runs of 1,000 where it pays, else one by one."""
    body = {"addLabelIds": list(change.add), "removeLabelIds": list(change.remove)}
    if len(ids) <= _PAYS:
        return await _each(transport, ids, "modify", "messages.modify", body)
    for start in range(0, len(ids), BATCH_LIMIT):
        part = ids[start : start + BATCH_LIMIT]
        await transport.call(
            "POST", f"{USER_PATH}/messages/batchModify", "messages.batchModify",
            body={"ids": part, **body},
        )  # fmt: skip
    return set()
