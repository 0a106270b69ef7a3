"""A scripted JMAP server (aiohttp.web) for what a real Cyrus will not do on demand.

This module owns `FakeJmap`: a small RFC 8620/8621 server with one account whose id needs
percent-encoding, an inbox, a trash and an archive, and Emails with any ids (up to 255
characters). It can clamp Email/query's `limit`, advertise small `maxObjectsInGet` and
`maxObjectsInSet` (and refuse requests over them with `requestTooLarge`), return ties in
`receivedAt` in a different order on every query, move `queryState` while a client pages,
answer scripted HTTP statuses (429 with Retry-After, 503), report per-item SetErrors, refuse
capabilities, or never answer. Downloads treat a Range header (RFC 9110 section 14) as
`ranges` says: honour it (206), ignore it (200, the whole blob), refuse it (416), answer
206 with more octets than asked, send a whole blob longer than its Email's size (chunked,
no Content-Length), or stall after the headers. Email/set honours `ifInState` (RFC 8620
section 5.3) and `before_set` plays another client changing the account just before a write.
It can serve over TLS, name a chosen `username`, redirect discovery or advertise other URLs
in its Session.
It records every method call and download, and the Authorization header of every request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

CORE, MAIL = "urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"
INBOX, TRASH, ARCHIVE = "mb-inbox", "mb-trash", "mb-archive"
ACCOUNT = "acc/1 x"  # a "/" and a space: only a percent-encoded download URL reaches it
USER, PASSWORD, TOKEN = "user", "secret", "tok.en-1_~+/="


@dataclass
class FakeEmail:
    id: str
    blob: bytes
    received: str = "2024-01-01T00:00:00Z"
    mailboxes: dict[str, bool] = field(default_factory=lambda: {INBOX: True})
    keywords: dict[str, bool] = field(default_factory=dict)

    @property
    def blob_id(self) -> str:
        return "B" + self.id


class FakeJmap:
    """Start with `async with FakeJmap(emails) as fake:`; `fake.url` is its origin."""

    def __init__(
        self,
        emails: list[FakeEmail] | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        **limits: int,
    ) -> None:
        self.emails = {email.id: email for email in emails or []}
        self.limits = {"maxObjectsInGet": 4096, "maxObjectsInSet": 4096, "maxCallsInRequest": 16}
        self.limits |= {"maxSizeRequest": 10_000_000} | limits
        self.clamp: int | None = None  # Email/query returns at most this many ids
        self.statuses: list[tuple[int, dict[str, str]]] = []  # next API replies, scripted
        self.set_errors: dict[str, str] = {}  # Email id -> SetError type for Email/set
        self.move_state_after: int | None = None  # queries until queryState changes once
        self.capabilities = {CORE: self.limits, MAIL: {}}
        self.refuse: set[str] = set()  # capabilities refused with unknownCapability
        self.method_errors: dict[str, str] = {}  # method name -> error type
        self.stall = False
        self.sorts_by_id = False  # advertise (and honour) "id" as a sort property
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.downloads: list[str] = []
        self.ranges = "ignore"  # honour, ignore, refuse, long, longer-whole, stall
        self.range_headers: list[str | None] = []  # the Range header of every download
        self.gone_blobs: set[str] = set()  # blob ids whose download is 404 (Email/get names them)
        self.authorizations: list[tuple[str, str | None]] = []  # (path, Authorization)
        self.email_state = 0  # the Email type's state (RFC 8620 section 5.1)
        self.before_set: Callable[[FakeJmap], None] | None = None
        self.username = USER  # the Session's `username`
        self.session_fields: dict[str, Any] = {}  # overrides apiUrl, downloadUrl, ...
        self.redirect = "/jmap/session"  # where /.well-known/jmap sends the client
        self.url = ""
        self._tls = tls
        self._state = 0
        self._queries = 0
        self._runner: web.AppRunner | None = None
        self._released = asyncio.Event()

    async def __aenter__(self) -> FakeJmap:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/.well-known/jmap", self._well_known)
        app.router.add_get("/jmap/session", self._session)
        app.router.add_post("/jmap/api/", self._api)
        app.router.add_get("/jmap/download/{tail:.*}", self._download)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._tls)
        await site.start()
        port = self._runner.addresses[0][1]
        # the test certificate names localhost (devkit.tlsca)
        self.url = f"https://localhost:{port}" if self._tls else f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._runner is not None
        self._released.set()
        await self._runner.cleanup()

    def methods(self, name: str) -> list[dict[str, Any]]:
        return [arguments for method, arguments in self.calls if method == name]

    # ------------------------------------------------------------------ HTTP

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.authorizations.append((request.path, request.headers.get("Authorization")))
        return await handler(request)

    def _authorised(self, request: web.Request) -> bool:
        basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return request.headers.get("Authorization") in (f"Basic {basic}", f"Bearer {TOKEN}")

    def _challenge(self) -> web.Response:
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="fake"'})

    async def _well_known(self, _request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": self.redirect})

    async def _session(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._challenge()
        sorts = ["receivedAt", "id"] if self.sorts_by_id else ["receivedAt"]
        mail = {"emailQuerySortOptions": sorts}
        account = {"name": USER, "isPersonal": True, "accountCapabilities": {MAIL: mail}}
        session = {
            "capabilities": self.capabilities,
            "accounts": {ACCOUNT: account},
            "primaryAccounts": {MAIL: ACCOUNT},
            "username": self.username,
            "apiUrl": "/jmap/api/",
            "downloadUrl": "/jmap/download/{accountId}/{blobId}/{name}?accept={type}",
            "uploadUrl": "/jmap/upload/{accountId}/",
            "eventSourceUrl": "/jmap/events/",
            "state": "s0",
        }
        return web.json_response(session | self.session_fields)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return self._challenge()
        parts = [unquote(p) for p in request.rel_url.raw_path.split("/")[3:]]
        self.downloads.append(parts[1] if len(parts) > 1 else "")
        found = [e for e in self.emails.values() if e.blob_id == parts[1]]
        if parts[1] in self.gone_blobs:
            found = []
        if parts[0] != ACCOUNT or not found or request.query.get("accept") != "message/rfc822":
            return web.Response(status=404)
        asked = request.headers.get("Range")
        self.range_headers.append(asked)
        if asked is None or self.ranges == "ignore":
            return web.Response(body=found[0].blob, content_type="message/rfc822")
        return await self._ranged(request, found[0].blob, asked)

    async def _ranged(self, request: web.Request, blob: bytes, asked: str) -> web.StreamResponse:
        """A download with a Range header, answered the way `ranges` says (only the suffix
        form `bytes=-N` is understood, which is all the bridge sends)."""
        suffix = int(asked.removeprefix("bytes=-"))
        first = max(0, len(blob) - suffix)
        content_range = f"bytes {first}-{len(blob) - 1}/{len(blob)}"
        if self.ranges == "honour":
            headers = {"Content-Range": content_range}
            return web.Response(status=206, body=blob[first:], headers=headers)
        if self.ranges == "refuse":
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(blob)}"})
        if self.ranges == "long":  # says the asked-for range, sends ten times as much
            headers = {"Content-Range": content_range}
            return web.Response(status=206, body=blob[-10 * suffix :], headers=headers)
        response = web.StreamResponse(status=200)
        response.enable_chunked_encoding()
        await response.prepare(request)
        if self.ranges == "stall":
            await response.write(blob[:1])
            await self._released.wait()  # set on exit, so shutdown need not wait for us
            return response
        await response.write(blob + b"and more\r\n")  # longer-whole
        await response.write_eof()
        return response

    async def _api(self, request: web.Request) -> web.Response:
        if self.stall:
            await self._released.wait()  # set on exit, so shutdown need not wait for us
        if not self._authorised(request):
            return self._challenge()
        if self.statuses:
            status, headers = self.statuses.pop(0)
            return web.Response(status=status, headers=headers)
        body = await request.json()
        missing = {CORE, MAIL} - set(body["using"]) or self.refuse & set(body["using"])
        if missing:
            problem = {"type": "urn:ietf:params:jmap:error:unknownCapability", "status": 400}
            return web.Response(
                status=400, text=json.dumps(problem), content_type="application/problem+json"
            )
        responses: list[list[Any]] = []
        for name, arguments, call_id in body["methodCalls"]:
            self.calls.append((name, arguments))
            answer = self._method(name, self._resolve(arguments, responses))
            kind = "error" if "type" in answer and len(answer) == 1 else name
            responses.append([kind, answer, call_id])
        return web.json_response({"methodResponses": responses, "sessionState": "s0"})

    @staticmethod
    def _resolve(arguments: dict[str, Any], responses: list[list[Any]]) -> dict[str, Any]:
        """RFC 8620 3.7 result references, for the one shape clients here use ("/ids")."""
        resolved = dict(arguments)
        for key, value in arguments.items():
            if key.startswith("#"):
                source = next(r for r in responses if r[2] == value["resultOf"])
                resolved[key[1:]] = source[1][value["path"].strip("/")]
                del resolved[key]
        return resolved

    # --------------------------------------------------------------- methods

    def _method(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        if name in self.method_errors:
            return {"type": self.method_errors[name]}
        if arguments.get("accountId") != ACCOUNT:
            return {"type": "accountNotFound"}
        handler = {
            "Mailbox/get": self._mailbox_get,
            "Email/query": self._email_query,
            "Email/get": self._email_get,
            "Email/set": self._email_set,
        }.get(name)
        return handler(arguments) if handler else {"type": "unknownMethod"}

    def _mailbox_get(self, _arguments: dict[str, Any]) -> dict[str, Any]:
        boxes = [(INBOX, "Inbox", "inbox"), (TRASH, "Trash", "trash"), (ARCHIVE, "Archive", None)]
        found = [{"id": i, "name": n, "parentId": None, "role": r} for i, n, r in boxes]
        return {"accountId": ACCOUNT, "state": "m0", "list": found, "notFound": []}

    def _email_query(self, arguments: dict[str, Any]) -> dict[str, Any]:
        condition = arguments.get("filter") or {}
        matches = [
            e
            for e in self.emails.values()
            if e.mailboxes.get(condition.get("inMailbox", ""))
            and not e.keywords.get(condition.get("notKeyword", ""))
        ]
        # Ties in receivedAt come back in a new order on every query, unless the client
        # asked for id as the second sort property.
        random.Random(self._queries).shuffle(matches)
        by_id = any(s.get("property") == "id" for s in arguments.get("sort") or [])
        matches.sort(key=lambda e: (e.received, e.id if by_id else ""))
        self._queries += 1
        limit = arguments.get("limit") or len(matches)
        answer: dict[str, Any] = {"accountId": ACCOUNT, "queryState": f"q{self._state}"}
        if self.clamp is not None and limit > self.clamp:
            limit = answer["limit"] = self.clamp
        position = arguments.get("position", 0)
        answer |= {"position": position, "total": len(matches)}
        answer["ids"] = [e.id for e in matches[position : position + limit]]
        if self.move_state_after is not None:
            self.move_state_after -= 1
            if self.move_state_after == 0:
                self._state += 1
                self.move_state_after = None
        return answer

    def _email_get(self, arguments: dict[str, Any]) -> dict[str, Any]:
        ids = arguments["ids"]
        if len(ids) > self.limits["maxObjectsInGet"]:
            return {"type": "requestTooLarge"}
        found = [self._email(self.emails[i]) for i in ids if i in self.emails]
        missing = [i for i in ids if i not in self.emails]
        state = f"e{self.email_state}"
        return {"accountId": ACCOUNT, "state": state, "list": found, "notFound": missing}

    @staticmethod
    def _email(email: FakeEmail) -> dict[str, Any]:
        return {
            "id": email.id,
            "blobId": email.blob_id,
            "size": len(email.blob),
            "receivedAt": email.received,
            "messageId": [f"{email.id[:20]}@fake"],
            "mailboxIds": email.mailboxes,
            "keywords": email.keywords,
        }

    def _email_set(self, arguments: dict[str, Any]) -> dict[str, Any]:
        destroy = arguments.get("destroy") or []
        update = arguments.get("update") or {}
        if len(destroy) + len(update) > self.limits["maxObjectsInSet"]:
            return {"type": "requestTooLarge"}
        if self.before_set is not None:
            self.before_set(self)
        expected = arguments.get("ifInState")
        if expected is not None and expected != f"e{self.email_state}":
            return {"type": "stateMismatch"}
        old = f"e{self.email_state}"
        self.email_state += 1
        answer: dict[str, Any] = {"accountId": ACCOUNT, "destroyed": [], "updated": {}}
        answer |= {"oldState": old, "newState": f"e{self.email_state}"}
        answer |= {"notDestroyed": {}, "notUpdated": {}}
        for email_id in destroy:
            if (error := self._set_error(email_id)) is not None:
                answer["notDestroyed"][email_id] = error
            else:
                del self.emails[email_id]
                answer["destroyed"].append(email_id)
        for email_id, patch in update.items():
            if (error := self._set_error(email_id)) is not None:
                answer["notUpdated"][email_id] = error
            elif not self._patch(self.emails[email_id], patch):
                # RFC 8621 4.1.1: an Email is in at least one Mailbox
                answer["notUpdated"][email_id] = {"type": "invalidProperties"}
            else:
                answer["updated"][email_id] = None
        return answer

    def _set_error(self, email_id: str) -> dict[str, str] | None:
        if email_id in self.set_errors:
            return {"type": self.set_errors[email_id]}
        return None if email_id in self.emails else {"type": "notFound"}

    @staticmethod
    def _patch(email: FakeEmail, patch: dict[str, Any]) -> bool:
        """Apply `patch`; False (nothing changed) if it would leave no Mailbox."""
        mailboxes, keywords = dict(email.mailboxes), dict(email.keywords)
        for path, value in patch.items():
            where, _, key = path.partition("/")
            target = mailboxes if where == "mailboxIds" else keywords
            key = key.replace("~1", "/").replace("~0", "~")  # RFC 6901 section 4
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
        if not mailboxes:
            return False
        email.mailboxes, email.keywords = mailboxes, keywords
        return True
