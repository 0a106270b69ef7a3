"""What happens upstream at QUIT: the Graph side of POP3's UPDATE state.

This module owns the only writes the Graph backend makes, on exactly the ids it was given,
sent through `$batch`: expunge is `permanentDelete` (to the Purges folder, unlike a plain
DELETE whose destination is undocumented); trash is a move to `deleteditems`; move is a
move to the named folder (an immutable id survives it); seen patches `isRead`; keyword
adds a category to the ones the message has (a PATCH replaces the whole list, so it is read
first and merged). Before writing, every message is looked up: one that is gone, or that
another client moved out of the maildrop folder, counts as done and is not touched, so
nothing outside the maildrop ever changes. A 412 (ErrorIrresolvableConflict, a concurrent
change) is retried with a fresh read.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from backends.graph import batch, folders
from backends.graph.batch import Inner
from backends.graph.transport import MISSING_CODES, Transport
from popbridge.contract import DisposeResult, Disposition, DispositionKind
from popbridge.errors import BackendFailure, BackendUnavailable

logger = logging.getLogger(__name__)

MAX_CONFLICT_ROUNDS = 3
_LOOKUP = "?$select=id,parentFolderId,categories"


@dataclass(frozen=True, slots=True)
class _Plan:
    """The write for each message; `keyword` set means "merge it into categories"."""

    method: str
    suffix: str
    body: dict[str, Any] | None
    done: str
    keyword: str | None = None

    def request(self, message_id: str, categories: list[str]) -> Inner:
        body = self.body
        if self.keyword is not None:
            # categories compare without case in Outlook: never add a second spelling
            known = {c.casefold() for c in categories}
            merged = categories if self.keyword.casefold() in known else [*categories, self.keyword]
            body = {"categories": merged}
        return Inner(self.method, message_path(message_id) + self.suffix, body)


def message_path(message_id: str) -> str:
    """Ids are case-sensitive and may hold "/", "+" or "=": always percent-encoded."""
    return f"/me/messages/{quote(message_id, safe='')}"


async def dispose(
    transport: Transport, maildrop_id: str, identities: Collection[str], how: Disposition
) -> DisposeResult:
    """Apply `how` to `identities`; report those not done."""
    ids = sorted(set(identities))
    if not ids:
        return DisposeResult()
    plan = await _plan(transport, maildrop_id, how)
    if isinstance(plan, str):
        logger.warning("%d message(s) not disposed: %s", len(ids), plan)
        return DisposeResult(frozenset(ids), plan)
    try:
        failed = await _apply(transport, maildrop_id, ids, plan)
    except (BackendUnavailable, BackendFailure) as exc:
        detail = f"not verified: {exc}"
        logger.warning("%s", detail)
        return DisposeResult(frozenset(ids), detail)
    if not failed:
        return DisposeResult()
    detail = f"{len(failed)} of {len(ids)} message(s) not {plan.done}"
    logger.warning("%s", detail)
    return DisposeResult(frozenset(failed), detail)


async def _plan(transport: Transport, maildrop_id: str, how: Disposition) -> _Plan | str:
    match how.kind:
        case DispositionKind.EXPUNGE:
            return _Plan("POST", "/permanentDelete", None, "deleted")
        case DispositionKind.TRASH:
            return await _move(transport, maildrop_id, "deleteditems", "moved to deleteditems")
        case DispositionKind.MOVE:
            if not how.folder:
                return "no target folder configured; nothing touched"
            return await _move(transport, maildrop_id, how.folder, f"moved to {how.folder!r}")
        case DispositionKind.SEEN:
            return _Plan("PATCH", "", {"isRead": True}, "marked read")
        case DispositionKind.KEYWORD:
            if not how.keyword or len(how.keyword) > 255:
                return f"category {how.keyword!r} is not usable; nothing touched"
            return _Plan("PATCH", "", None, f"given category {how.keyword}", how.keyword)
    return f"unsupported disposition {how.kind}"


async def _move(transport: Transport, maildrop_id: str, path: str, done: str) -> _Plan | str:
    target = await folders.resolve(transport, path)
    if target is None:
        return f"no folder {path!r}; nothing touched"
    if target.id == maildrop_id:
        return "the target folder is the maildrop itself; nothing touched"
    return _Plan("POST", "/move", {"destinationId": target.id}, done)


async def _apply(transport: Transport, maildrop_id: str, ids: list[str], plan: _Plan) -> set[str]:
    """Look up, write, and retry conflicts; the ids not done."""
    failed: set[str] = set()
    pending = ids
    for _ in range(MAX_CONFLICT_ROUNDS):
        present, lost = await _present(transport, maildrop_id, pending)
        failed |= lost
        requests = {i: plan.request(i, present[i]) for i in present}
        outcomes = await batch.run(transport, requests)
        pending = []
        for message_id, outcome in outcomes.items():
            if outcome.status == 412:  # ErrorIrresolvableConflict: read again, write again
                pending.append(message_id)
            elif not (200 <= outcome.status < 300 or _gone(outcome.status, outcome.code)):
                logger.info("%s: not %s (HTTP %d %s)", message_id, plan.done,
                            outcome.status, outcome.code)  # fmt: skip
                failed.add(message_id)
        if not pending:
            return failed
    return failed | set(pending)


async def _present(
    transport: Transport, maildrop_id: str, ids: list[str]
) -> tuple[dict[str, list[str]], set[str]]:
    """The ids still in the maildrop, with their categories; and those that could not be
    looked up. Gone or moved elsewhere: neither (done, and not touched)."""
    outcomes = await batch.run(transport, {i: Inner("GET", message_path(i) + _LOOKUP) for i in ids})
    present: dict[str, list[str]] = {}
    unknown: set[str] = set()
    for message_id, outcome in outcomes.items():
        if _gone(outcome.status, outcome.code):
            continue
        body = outcome.body if isinstance(outcome.body, dict) else {}
        if not 200 <= outcome.status < 300:
            unknown.add(message_id)
        elif body.get("parentFolderId") == maildrop_id:
            categories = body.get("categories")
            present[message_id] = [c for c in categories or () if isinstance(c, str)]
    return present, unknown


def _gone(status: int, code: str) -> bool:
    return status == 404 or code in MISSING_CODES
