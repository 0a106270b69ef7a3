"""What happens upstream at QUIT: the JMAP side of POP3's UPDATE state (conformance J-11).

This module owns the only writes the JMAP backend ever makes, each an Email/set (RFC 8621
section 4.6) on at most the ids it was given, in chunks within `maxObjectsInGet`,
`maxObjectsInSet` and `maxSizeRequest`. One Email can be in several Mailboxes (RFC 8621
section 4.1.1; Cyrus shows an IMAP COPY as one Email in two), and another client may have
moved it since the listing, so each chunk first reads the Emails' current `mailboxIds`:

- an Email no longer in the maildrop is left alone and counts as done (as in IMAP);
- expunge destroys only an Email whose sole Mailbox is the maildrop; one also elsewhere only
  leaves the maildrop (a `mailboxIds/<maildrop>: null` patch);
- trash and move patch `mailboxIds` (the maildrop's id removed, the target's added in one
  patch), so copies elsewhere stay where they are; seen and keyword patch `keywords`.

The write carries `ifInState` with the state that read returned (RFC 8620 section 5.3), so
a change in between makes the server refuse it with `stateMismatch`; the chunk is then read
and planned again, a bounded number of times. Every id is checked in `destroyed`/`updated`
and `notDestroyed`/`notUpdated`; an id that is `notFound` is gone already and counts as done.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from backends.jmap import folders
from backends.jmap.api import Api, MethodError
from backends.jmap.listing import is_keyword
from popbridge.contract import DisposeResult, Disposition, DispositionKind
from popbridge.errors import BackendFailure, BackendUnavailable

logger = logging.getLogger(__name__)

_ENVELOPE = 512  # octets of a Request around the Email/set arguments, generously counted
MAX_ATTEMPTS = 4  # reads and guarded writes of one chunk before giving up (stateMismatch)


@dataclass(frozen=True, slots=True)
class _Plan:
    """`patch` for every Email still in the maildrop; with `destroy_sole`, an Email whose only
    Mailbox is the maildrop is destroyed instead. `done` is for the log."""

    patch: dict[str, Any]
    done: str
    destroy_sole: bool = False


@dataclass(frozen=True, slots=True)
class _Current:
    """What one Email/get said: the Email type's state and each found Email's Mailboxes."""

    state: str
    mailboxes: dict[str, frozenset[str]]


def pointer(token: str) -> str:
    """One JSON Pointer reference token (RFC 6901 section 3): PatchObject keys are pointers
    (RFC 8620 section 5.3), so "~" and "/" in an id or keyword must not split the path."""
    return token.replace("~", "~0").replace("/", "~1")


async def dispose(
    api: Api, maildrop_id: str, identities: Collection[str], how: Disposition
) -> DisposeResult:
    """Apply `how` to those of `identities` still in the maildrop; report those not done."""
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
            failed |= await _settle(api, maildrop_id, chunk, plan)
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
    leave = {f"mailboxIds/{pointer(maildrop_id)}": None}
    match how.kind:
        case DispositionKind.EXPUNGE:
            return _Plan(leave, "destroyed", destroy_sole=True)
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


def _chunks(ids: list[str], patch: dict[str, Any], api: Api) -> Iterator[list[str]]:
    """Runs of ids one Email/get can read (maxObjectsInGet) and one Email/set can write
    (maxObjectsInSet: creates+updates+destroys, RFC 8620 section 2), whose Request stays
    under maxSizeRequest."""
    limits = api.session.limits
    most = min(limits.max_objects_in_set, limits.max_objects_in_get)
    per_id = len(json.dumps(patch))
    budget = limits.max_size_request - _ENVELOPE - len(api.account_id)
    chunk: list[str] = []
    size = 0
    for email_id in ids:
        cost = len(json.dumps(email_id)) + per_id + 2
        if chunk and (len(chunk) >= most or size + cost > budget):
            yield chunk
            chunk, size = [], 0
        chunk.append(email_id)
        size += cost
    if chunk:
        yield chunk


async def _settle(api: Api, maildrop_id: str, chunk: list[str], plan: _Plan) -> set[str]:
    """Read, plan and write one chunk, again while another client changes the account in
    between; returns the ids that were not done."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        current = await _current(api, chunk)
        destroy, update = _split(current, maildrop_id, plan)
        left = len(chunk) - len(destroy) - len(update)
        if left:
            logger.info("%d Email(s) left the maildrop since the listing: not touched", left)
        if not destroy and not update:
            return set()
        try:
            return await _apply(api, current.state, destroy, update, plan)
        except MethodError as exc:
            if exc.kind != "stateMismatch":
                raise
            logger.info("Email/set: the account changed since it was read (attempt %d)", attempt)
    raise BackendUnavailable(f"the account kept changing: {len(chunk)} Email(s) not written")


async def _current(api: Api, ids: list[str]) -> _Current:
    """The Emails' Mailboxes now (RFC 8621 section 4.1.1), with the state they describe."""
    arguments = {"accountId": api.account_id, "ids": ids, "properties": ["mailboxIds"]}
    (response,) = await api.call(("Email/get", arguments))
    state = response.get("state")
    if not isinstance(state, str) or not state:
        raise BackendFailure("Email/get: no state in the response")
    found: dict[str, frozenset[str]] = {}
    for entry in response.get("list") or []:
        email_id = entry.get("id") if isinstance(entry, dict) else None
        mailboxes = entry.get("mailboxIds") if isinstance(entry, dict) else None
        if email_id not in ids or not isinstance(mailboxes, dict):
            continue
        found[str(email_id)] = frozenset(str(k) for k, v in mailboxes.items() if v is True)
    return _Current(state, found)


def _split(current: _Current, maildrop_id: str, plan: _Plan) -> tuple[list[str], list[str]]:
    """(ids to destroy, ids to patch): only Emails still in the maildrop, and destroyed only
    where the maildrop is their sole Mailbox."""
    destroy, update = [], []
    for email_id, mailboxes in current.mailboxes.items():
        if maildrop_id not in mailboxes:
            continue  # moved away by another client: not ours to touch any more
        if plan.destroy_sole and mailboxes == {maildrop_id}:
            destroy.append(email_id)
        else:
            update.append(email_id)
    return destroy, update


async def _apply(
    api: Api, state: str, destroy: list[str], update: list[str], plan: _Plan
) -> set[str]:
    """One Email/set guarded by `ifInState`; returns the ids that were not done."""
    arguments: dict[str, Any] = {"accountId": api.account_id, "ifInState": state}
    if destroy:
        arguments["destroy"] = destroy
    if update:
        arguments["update"] = dict.fromkeys(update, plan.patch)
    (response,) = await api.call(("Email/set", arguments))
    failed = _unconfirmed(response, destroy, "destroyed", "notDestroyed", plan.done)
    return failed | _unconfirmed(response, update, "updated", "notUpdated", plan.done)


def _unconfirmed(
    response: dict[str, Any], ids: list[str], done_key: str, error_key: str, what: str
) -> set[str]:
    done = response.get(done_key) or ()
    errors = response.get(error_key) or {}
    if not isinstance(errors, dict):
        errors = {}
    failed = set()
    for email_id in ids:
        error = errors.get(email_id)
        kind = error.get("type") if isinstance(error, dict) else None
        if kind == "notFound":
            continue  # gone already: the maildrop no longer shows it either way
        if error is not None or email_id not in done:
            logger.info("Email/set: %r not %s (%s)", email_id, what, kind or "no answer")
            failed.add(email_id)
    return failed
