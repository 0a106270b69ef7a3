"""What happens upstream at QUIT: the JMAP side of POP3's UPDATE state (conformance J-11).

This module owns the only writes the JMAP backend ever makes, each an Email/set (RFC 8621
section 4.6) on exactly the ids it was given, chunked to `maxObjectsInSet` and
`maxSizeRequest`: `destroy` for expunge; a patch of `mailboxIds` for trash and move (the
maildrop's id removed, the target's added in the same patch, because an Email must always be
in at least one Mailbox, RFC 8621 section 4.1.1); a patch of `keywords` for seen and keyword.
Every id is checked in `destroyed`/`updated` and `notDestroyed`/`notUpdated`; an id that is
`notFound` is already gone from the maildrop and counts as done, as in the IMAP backend.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from backends.jmap import folders
from backends.jmap.api import Api
from backends.jmap.listing import is_keyword
from popbridge.contract import DisposeResult, Disposition, DispositionKind
from popbridge.errors import BackendFailure, BackendUnavailable

logger = logging.getLogger(__name__)

_ENVELOPE = 512  # octets of a Request around the Email/set arguments, generously counted


@dataclass(frozen=True, slots=True)
class _Plan:
    """Destroy (patch is None) or update every id with `patch`; `done` is for the log."""

    patch: dict[str, Any] | None
    done: str


def pointer(token: str) -> str:
    """One JSON Pointer reference token (RFC 6901 section 3): PatchObject keys are pointers
    (RFC 8620 section 5.3), so "~" and "/" in an id or keyword must not split the path."""
    return token.replace("~", "~0").replace("/", "~1")


async def dispose(
    api: Api, maildrop_id: str, identities: Collection[str], how: Disposition
) -> DisposeResult:
    """Apply `how` to `identities`; report those not done."""
    ids = sorted(set(identities))
    if not ids:
        return DisposeResult()
    plan = await _plan(api, maildrop_id, how)
    if isinstance(plan, str):
        logger.warning("%d message(s) not disposed: %s", len(ids), plan)
        return DisposeResult(frozenset(ids), plan)
    failed: set[str] = set()
    detail = ""
    chunks = list(_chunks(ids, plan.patch, api))
    for number, chunk in enumerate(chunks):
        try:
            failed |= await _apply(api, chunk, plan)
        except (BackendUnavailable, BackendFailure) as exc:
            # This chunk's outcome is unknown and later chunks were not sent.
            for rest in chunks[number:]:
                failed.update(rest)
            detail = f"not verified: {exc}"
            break
    if failed:
        detail = detail or f"{len(failed)} of {len(ids)} message(s) not {plan.done}"
        logger.warning("%s", detail)
    return DisposeResult(frozenset(failed), detail if failed else "")


async def _plan(api: Api, maildrop_id: str, how: Disposition) -> _Plan | str:
    """The Email/set for `how`, or why there is none (then nothing is touched)."""
    match how.kind:
        case DispositionKind.EXPUNGE:
            return _Plan(None, "destroyed")
        case DispositionKind.TRASH:
            trash = folders.by_role(await folders.load(api), "trash")
            if trash is None:
                return "no Mailbox has the trash role (RFC 8621 section 2); nothing touched"
            return _move(maildrop_id, trash.id, "moved to the trash")
        case DispositionKind.MOVE:
            if not how.folder:
                return "no target mailbox configured; nothing touched"
            target = folders.by_path(await folders.load(api), how.folder)
            if target is None:
                return f"no mailbox named {how.folder!r}; nothing touched"
            return _move(maildrop_id, target.id, f"moved to {how.folder!r}")
        case DispositionKind.SEEN:
            return _Plan({"keywords/$seen": True}, "marked $seen")
        case DispositionKind.KEYWORD:
            keyword = (how.keyword or "").lower()  # case-insensitive; servers store lowercase
            if not is_keyword(keyword):
                return f"keyword {how.keyword!r} is not a JMAP keyword; nothing touched"
            if pointer(keyword) != keyword:
                # Cyrus 3.6 does not decode ~0/~1 in patch keys and would store the escaped
                # form, so a keyword that needs them is refused rather than mangled.
                return f"keyword {how.keyword!r} contains '/' or '~'; nothing touched"
            return _Plan({f"keywords/{keyword}": True}, f"given {keyword}")
    return f"unsupported disposition {how.kind}"


def _move(source: str, target: str, done: str) -> _Plan | str:
    if source == target:
        return "the target mailbox is the maildrop itself; nothing touched"
    # RFC 8621 4.6: remove the maildrop's id and add the target's in one patch; other
    # Mailboxes the Email is also in are left alone (conformance J-11 a).
    return _Plan(
        {f"mailboxIds/{pointer(source)}": None, f"mailboxIds/{pointer(target)}": True}, done
    )


def _chunks(ids: list[str], patch: dict[str, Any] | None, api: Api) -> Iterator[list[str]]:
    """Runs of ids within maxObjectsInSet (creates+updates+destroys, RFC 8620 section 2)
    whose Request stays under maxSizeRequest."""
    limits = api.session.limits
    per_id = len(json.dumps(patch)) if patch is not None else 0
    budget = limits.max_size_request - _ENVELOPE - len(api.account_id)
    chunk: list[str] = []
    size = 0
    for email_id in ids:
        cost = len(json.dumps(email_id)) + per_id + 2
        if chunk and (len(chunk) >= limits.max_objects_in_set or size + cost > budget):
            yield chunk
            chunk, size = [], 0
        chunk.append(email_id)
        size += cost
    if chunk:
        yield chunk


async def _apply(api: Api, chunk: list[str], plan: _Plan) -> set[str]:
    """One Email/set; returns the ids that were not done."""
    arguments: dict[str, Any] = {"accountId": api.account_id}
    if plan.patch is None:
        arguments["destroy"] = chunk
    else:
        arguments["update"] = dict.fromkeys(chunk, plan.patch)
    (response,) = await api.call(("Email/set", arguments))
    destroying = plan.patch is None
    done = response.get("destroyed" if destroying else "updated") or ()
    errors = response.get("notDestroyed" if destroying else "notUpdated") or {}
    if not isinstance(errors, dict):
        errors = {}
    failed = set()
    for email_id in chunk:
        error = errors.get(email_id)
        kind = error.get("type") if isinstance(error, dict) else None
        if kind == "notFound":
            continue  # gone already: the maildrop no longer shows it either way
        if error is not None or email_id not in done:
            logger.info("Email/set: %r not %s (%s)", email_id, plan.done, kind or "no answer")
            failed.add(email_id)
    return failed
