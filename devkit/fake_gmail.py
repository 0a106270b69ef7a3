"""A fake Gmail API v1 (aiohttp.web) built from Google's published reference, for tests.

This module owns `FakeGmail`: one mailbox per bearer token's user, with the system labels
(INBOX, SPAM, TRASH, UNREAD, STARRED, IMPORTANT, SENT) and user labels, and the calls the
backend makes: users.getProfile, labels.list/create, messages.list (labelIds ANDed,
includeSpamTrash, maxResults up to 500, opaque pageTokens, an order only roughly newest
first and a resultSizeEstimate that is wrong), messages.get (format=minimal and raw: the
message base64url-encoded with CRLF line ends, "=" written as \\u003d as Google's encoder
does, a sizeEstimate that differs from the raw length, `fields` honoured),
messages.modify/trash/delete, batchModify and batchDelete (at most 1,000 ids), the batch
endpoint for messages.get (at most 100 calls; `inner_throttle` answers inner calls 429), and
history.list (404 for a historyId older than the oldest
kept). Deletes need the https://mail.google.com/ scope (else 403 insufficientPermissions).
Scripted failures: `throttle` answers the next requests with 429 or 403
userRateLimitExceeded/rateLimitExceeded; clearing `released` makes every request hang;
`mangle` rewrites messages.get replies and `cut_at` ends them early (a cut, or with
`stall_body`, a stall); `replies` answers chosen paths with any body. It records every
request, the units spent, downloads, and the most requests in flight.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from devkit import fake_gmail_wire as batch
from devkit.fake_gmail_wire import FakeMessage, Mailbox, error, page_start, page_token

FULL = "https://mail.google.com/"
MODIFY = "https://www.googleapis.com/auth/gmail.modify"
SYSTEM = ("INBOX", "SPAM", "TRASH", "UNREAD", "STARRED", "IMPORTANT", "SENT")
UNITS = {"profile": 1, "labels": 1, "list": 5, "get": 5, "modify": 5, "trash": 5,
         "delete": 10, "batchModify": 50, "batchDelete": 50, "history": 2}  # fmt: skip
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Authed = Callable[[web.Request, "Mailbox", str], Awaitable[web.StreamResponse]]
Tokens = dict[str, tuple[str, str]] | Callable[[str], tuple[str, str] | None]


class FakeGmail:
    """Start with `async with FakeGmail({token: (address, scope)}) as fake:`, or with a
    function that maps an access token to (address, scope), or None if it is not valid."""

    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens.get if isinstance(tokens, dict) else tokens
        self.boxes: dict[str, Mailbox] = {}
        self.requests: list[tuple[str, str, str]] = []  # method, path, query
        self.units = 0
        self.downloads = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.throttle: list[tuple[int, str]] = []  # (429 | 403, reason) for the next requests
        self.released = asyncio.Event()  # cleared: every request hangs until it is set
        self.released.set()
        self.delay = 0.0  # seconds each request takes, to see concurrency
        self.mangle: Callable[[bytes], bytes] | None = None  # rewrites messages.get replies
        self.replies: dict[str, bytes] = {}  # path suffix -> a 200 reply with this body
        self.cut_at: int | None = None  # messages.get replies stop after this many octets
        self.batches: list[int] = []  # calls per batch request
        self.inner_throttle = 0  # this many inner batch calls are answered 429
        self.stall_body = False  # with cut_at: hang there instead of dropping the connection
        self._ended = asyncio.Event()
        self.url = ""
        self._ids = itertools.count(0x18C0000000000000 + random.randrange(1 << 40))
        self._clock = itertools.count(1_700_000_000_000, 1000)
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeGmail:
        app = web.Application(middlewares=[self._middleware])
        base = "/gmail/v1/users/{user}"
        app.router.add_get(base + "/profile", self._authed(self._profile))
        app.router.add_get(base + "/labels", self._authed(self._labels))
        app.router.add_post(base + "/labels", self._authed(self._create_label))
        app.router.add_get(base + "/messages", self._authed(self._list))
        app.router.add_post(base + "/messages/batchModify", self._authed(self._batch_modify))
        app.router.add_post(base + "/messages/batchDelete", self._authed(self._batch_delete))
        app.router.add_get(base + "/messages/{id}", self._authed(self._get))
        app.router.add_delete(base + "/messages/{id}", self._authed(self._delete))
        app.router.add_post(base + "/messages/{id}/{action}", self._authed(self._action))
        app.router.add_get(base + "/history", self._authed(self._history))
        app.router.add_post("/batch/gmail/v1", self._authed(self._batch))
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.released.set()
        self._ended.set()
        assert self._runner is not None
        await self._runner.cleanup()

    # ------------------------------------------------------------------ state

    def box(self, address: str) -> Mailbox:
        return self.boxes.setdefault(address, Mailbox(address))

    def seed(self, address: str, raws: list[bytes], labels: set[str] | None = None) -> list[str]:
        """Deliver messages, oldest first; returns their ids."""
        box = self.box(address)
        ids = []
        for raw in raws:
            message_id = format(next(self._ids), "x")
            crlf = re.sub(rb"\r?\n", b"\r\n", raw)
            box.messages[message_id] = FakeMessage(
                message_id, crlf, next(self._clock), set(labels or {"INBOX", "UNREAD"})
            )
            self._record(box, "messagesAdded", box.messages[message_id])
            ids.append(message_id)
        return ids

    def add_label(self, address: str, name: str) -> str:
        box = self.box(address)
        label_id = f"Label_{len(box.labels) + 1}"
        box.labels[label_id] = name
        return label_id

    def label_id(self, address: str, name: str) -> str | None:
        if name in SYSTEM:
            return name
        box = self.box(address)
        return next((i for i, n in box.labels.items() if n.casefold() == name.casefold()), None)

    def forget_history(self, address: str) -> None:
        """History before now is no longer kept: older historyIds get 404."""
        box = self.box(address)
        box.oldest_history = box.history_id

    def _record(self, box: Mailbox, kind: str, message: FakeMessage, **extra: Any) -> None:
        box.history_id += random.randint(1, 5)  # increasing, not contiguous
        entry = {"id": message.id, "threadId": message.id, "labelIds": sorted(message.labels)}
        record = {
            "id": str(box.history_id),
            "messages": [entry],
            kind: [{"message": entry, **extra}],
        }
        box.history.append(record)

    def change_labels(self, address: str, message_id: str, add: set[str], remove: set[str]) -> None:
        """What another client does: label changes with their history records."""
        box = self.box(address)
        message = box.messages[message_id]
        if add - message.labels:
            message.labels |= add
            self._record(box, "labelsAdded", message, labelIds=sorted(add))
        if remove & message.labels:
            message.labels -= remove
            self._record(box, "labelsRemoved", message, labelIds=sorted(remove))

    def remove(self, address: str, message_id: str) -> None:
        box = self.box(address)
        message = box.messages.pop(message_id)
        self._record(box, "messagesDeleted", message)

    # ------------------------------------------------------------------ HTTP

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests.append((request.method, request.path, request.query_string))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.released.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.throttle:
                status, reason = self.throttle.pop(0)
                if status == 429:
                    return error(429, "rateLimitExceeded", "Too many concurrent requests for user")
                return error(403, reason, "Quota exceeded")
            for suffix, body in self.replies.items():
                if request.path.endswith(suffix):
                    return web.Response(body=body, content_type="application/json")
            return await handler(request)
        finally:
            self.in_flight -= 1

    def _authed(self, handler: Authed) -> Handler:
        """`handler` for the bearer token's user only (Google's 401 otherwise)."""

        async def checked(request: web.Request) -> web.StreamResponse:
            user = self._user(request)
            if isinstance(user, web.Response):
                return user
            return await handler(request, *user)

        return checked

    def _user(self, request: web.Request) -> tuple[Mailbox, str] | web.Response:
        header = request.headers.get("Authorization", "")
        found = self._tokens(header[7:]) if header.startswith("Bearer ") else None
        if found is None:
            return error(401, "authError", "Request had invalid authentication credentials.")
        address, scope = found
        if request.match_info.get("user", "me") not in ("me", address):
            return error(403, "forbidden", "Delegation denied")
        return self.box(address), scope

    def _spend(self, name: str) -> None:
        self.units += UNITS[name]

    async def _profile(self, request: web.Request, box: Mailbox, scope: str) -> web.StreamResponse:
        self._spend("profile")
        return web.json_response(
            {
                "emailAddress": box.address,
                "historyId": str(box.history_id),
                "messagesTotal": len(box.messages),
                "threadsTotal": 0,
            }
        )

    async def _labels(self, request: web.Request, box: Mailbox, scope: str) -> web.StreamResponse:
        self._spend("labels")
        labels = [{"id": name, "name": name, "type": "system"} for name in SYSTEM]
        labels += [{"id": i, "name": n, "type": "user"} for i, n in box.labels.items()]
        return web.json_response({"labels": labels})

    async def _create_label(
        self, request: web.Request, box: Mailbox, scope: str
    ) -> web.StreamResponse:
        name = (await request.json()).get("name", "")
        if self.label_id(box.address, name) is not None:
            return error(409, "duplicate", "Label name exists or conflicts")
        label_id = self.add_label(box.address, name)
        return web.json_response({"id": label_id, "name": name, "type": "user"})

    async def _list(self, request: web.Request, box: Mailbox, scope: str) -> web.StreamResponse:
        self._spend("list")
        query = request.query
        size = int(query.get("maxResults", "100"))
        if not 1 <= size <= 500:
            return error(400, "invalidArgument", "maxResults out of range")
        wanted = set(query.getall("labelIds", []))
        spam_trash = query.get("includeSpamTrash", "false") == "true"
        found = [m for m in box.messages.values() if wanted <= m.labels
                 and (spam_trash or not m.labels & {"SPAM", "TRASH"})]  # fmt: skip
        found.sort(key=lambda m: (-m.internal_date, m.id))
        for index in range(0, len(found) - 1, 3):  # only roughly newest first
            found[index], found[index + 1] = found[index + 1], found[index]
        start = page_start(query.get("pageToken"))
        if start is None:
            return error(400, "invalidArgument", "Invalid pageToken")
        page = found[start : start + size]
        body: dict[str, Any] = {"resultSizeEstimate": len(found) + 13}
        if page:
            body["messages"] = [{"id": m.id, "threadId": m.id} for m in page]
        if start + size < len(found):
            body["nextPageToken"] = page_token(start + size)
        return web.json_response(body)

    async def _get(self, request: web.Request, box: Mailbox, scope: str) -> web.StreamResponse:
        self._spend("get")
        message = box.messages.get(request.match_info["id"])
        if message is None:
            return error(404, "notFound", "Requested entity was not found.")
        form = request.query.get("format", "full")
        if form == "raw":
            self.downloads += 1
        data = message.resource(form)
        fields = request.query.get("fields")
        if fields:
            keep = set(fields.split(","))
            data = {k: v for k, v in data.items() if k in keep}
        body = json.dumps(data, indent=1).replace("=", "\\u003d").encode()
        if self.mangle is not None:
            body = self.mangle(body)
        if self.cut_at is None:
            return web.Response(body=body, content_type="application/json")
        return await self._cut(request, body, self.cut_at)

    async def _batch(self, request: web.Request, box: Mailbox, scope: str) -> web.StreamResponse:
        """Gmail's batch endpoint, for messages.get calls (at most 100 of them)."""
        calls = batch.parse_request(request.headers.get("Content-Type", ""), await request.read())
        if isinstance(calls, str):
            return error(400, "badRequest", calls)
        self.batches.append(len(calls))
        answers = []
        for call in calls:
            path, _, _ = call.target.partition("?")
            found = re.fullmatch(r"/gmail/v1/users/(me|[^/]+)/messages/([0-9a-f]+)", path)
            if call.method != "GET" or found is None:
                answers.append((call.content_id, 501, b'{"error": {"code": 501}}'))
                continue
            inner = make_mocked_request(
                "GET", call.target, headers=request.headers,
                match_info={"user": found.group(1), "id": found.group(2)},
            )  # fmt: skip
            reply = self._inner_throttled() or await self._get(inner, box, scope)
            assert isinstance(reply, web.Response)
            assert isinstance(reply.body, bytes)
            answers.append((call.content_id, reply.status, reply.body))
        body, content_type = batch.write_reply(answers)
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _inner_throttled(self) -> web.Response | None:
        if not self.inner_throttle:
            return None
        self.inner_throttle -= 1
        return error(429, "rateLimitExceeded", "Too many concurrent requests for user")

    async def _cut(self, request: web.Request, body: bytes, at: int) -> web.StreamResponse:
        """Send `at` octets of a reply announced whole, then hang (`stall_body`) or drop
        the connection."""
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[:at])
        if self.stall_body:
            await self._ended.wait()
        assert request.transport is not None
        request.transport.close()
        return response

    async def _delete(self, request: web.Request, box: Mailbox, scope: str) -> web.StreamResponse:
        if scope != FULL:
            return error(403, "insufficientPermissions", "Insufficient Permission")
        self._spend("delete")
        if request.match_info["id"] not in box.messages:
            return error(404, "notFound", "Requested entity was not found.")
        self.remove(box.address, request.match_info["id"])
        return web.Response(status=204)

    async def _action(self, request: web.Request, box: Mailbox, scope: str) -> web.StreamResponse:
        action = request.match_info["action"]
        if action not in ("trash", "modify"):
            return error(404, "notFound", "Not found")
        self._spend(action)
        message = box.messages.get(request.match_info["id"])
        if message is None:
            return error(404, "notFound", "Requested entity was not found.")
        if action == "trash":
            self.change_labels(box.address, message.id, {"TRASH"}, set())
        else:
            body = await request.json()
            problem = self._modify(box, [message.id], body)
            if problem is not None:
                return problem
        return web.json_response(message.resource("minimal"))

    def _modify(self, box: Mailbox, ids: list[str], body: dict[str, Any]) -> web.Response | None:
        add, remove = set(body.get("addLabelIds") or []), set(body.get("removeLabelIds") or [])
        known = set(SYSTEM) | set(box.labels)
        if not (add | remove) <= known:
            return error(400, "invalidArgument", "Invalid label")
        for message_id in ids:
            if message_id in box.messages:
                self.change_labels(box.address, message_id, add, remove)
        return None

    async def _batch_modify(
        self, request: web.Request, box: Mailbox, scope: str
    ) -> web.StreamResponse:
        self._spend("batchModify")
        body = await request.json()
        ids = body.get("ids") or []
        if len(ids) > 1000:
            return error(400, "invalidArgument", "Too many ids: at most 1000")
        problem = self._modify(box, ids, body)
        return problem or web.Response(status=204)

    async def _batch_delete(
        self, request: web.Request, box: Mailbox, scope: str
    ) -> web.StreamResponse:
        if scope != FULL:
            return error(403, "insufficientPermissions", "Insufficient Permission")
        self._spend("batchDelete")
        ids = (await request.json()).get("ids") or []
        if len(ids) > 1000:
            return error(400, "invalidArgument", "Too many ids: at most 1000")
        for message_id in ids:
            if message_id in box.messages:
                self.remove(box.address, message_id)
        return web.Response(status=204)

    async def _history(self, request: web.Request, box: Mailbox, scope: str) -> web.StreamResponse:
        self._spend("history")
        try:
            start = int(request.query["startHistoryId"])
        except (KeyError, ValueError):
            return error(400, "invalidArgument", "startHistoryId is required")
        if start < box.oldest_history or start > box.history_id:
            return error(404, "notFound", "Requested entity was not found.")
        types = set(request.query.getall("historyTypes", []))
        # historyTypes messageAdded, labelRemoved ... name the records' keys in the plural
        keys = {t.replace("message", "messages").replace("label", "labels") for t in types}
        records = [r for r in box.history if int(r["id"]) > start and (not keys or keys & set(r))]
        offset = page_start(request.query.get("pageToken"))
        size = int(request.query.get("maxResults", "100"))
        if offset is None:
            return error(400, "invalidArgument", "Invalid pageToken")
        body: dict[str, Any] = {"historyId": str(box.history_id)}
        if records[offset : offset + size]:
            body["history"] = records[offset : offset + size]
        if offset + size < len(records):
            body["nextPageToken"] = page_token(offset + size)
        return web.json_response(body)
