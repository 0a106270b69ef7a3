"""A local Microsoft Graph (v1.0 mail) for tests, built from Graph's published documentation.

This module owns `FakeGraph`: an aiohttp server holding one mailbox, whose bearer tokens
each name a user (`/me`), with the mail resources the Graph backend uses, behaving as
Microsoft documents them and as public issue trackers observed them: mail folders by
well-known name, id, and `childFolders`; `messages` paged by offset (`$top`, `$skip` in
`@odata.nextLink`, `$select`, `$orderby`); immutable ids (68 characters) with
`Prefer: IdType="ImmutableId"` and classic ids (152, ending in "=") without it, either
accepted; `$value` streamed without Content-Length, 405 on HEAD, optionally written anew on
every download, or stalled or cut after its first piece; `permanentDelete`, `move` (the
immutable id is kept, the classic one changes), PATCH `isRead`/`categories` (the list
replaced) with scripted 412 ErrorIrresolvableConflict; `$batch` of at most 20 with scripted
inner 429s; `messages/delta` with `@removed` entries and 410 for expired tokens; and
Outlook's limit of four concurrent requests per mailbox, answered 429 ApplicationThrottled
with Retry-After: 1. It records every request (method, path, whether Prefer was sent).
The resources' data lives in `devkit.fake_graph_model`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web

from devkit.fake_graph_model import (
    FakeFolder,
    FakeMessage,
    classic_id,
    error,
    immutable_id,
    link,
    mapi_size,
    pick,
    select_of,
)

PREFER = 'IdType="ImmutableId"'
WELL_KNOWN = ("inbox", "deleteditems", "archive", "junkemail", "sentitems", "drafts")
MAX_BATCH = 20
_START = datetime(2024, 1, 1, tzinfo=UTC)
_IMMUTABLE = web.RequestKey("immutable", bool)
_USER = web.RequestKey("user", str)


class FakeGraph:
    """`async with FakeGraph({token: user}) as fake:`; `fake.url` is the service root."""

    def __init__(self, tokens: dict[str, str] | Callable[[str], str | None]) -> None:
        self._tokens = tokens
        self.folders: dict[str, FakeFolder] = {}
        for name in WELL_KNOWN:
            folder = FakeFolder(classic_id()[:120], name.capitalize(), name)
            self.folders[folder.id] = folder
        self.messages: list[FakeMessage] = []
        self.honour_prefer = True  # False: classic ids even when immutable ones are asked for
        self.regenerate = False  # write the MIME anew (another length) on every download
        self.concurrency = 4  # Outlook: four concurrent requests per app and mailbox
        self.statuses: list[tuple[int, str]] = []  # next replies to any request, scripted
        self.raw: list[tuple[int, bytes]] = []  # next replies as (status, JSON body) verbatim
        self.conflicts: dict[str, int] = {}  # message id -> 412s still to answer a PATCH
        self.batch_throttle = 0  # inner batch requests still to answer 429
        self.on_page: Callable[[int], None] | None = None  # called before each message page
        self.on_value: Callable[[str], None] | None = None  # called before each $value
        self.foreign_links = False  # nextLinks to another origin
        self.misbehave: str | None = None  # "stall" or "cut" a $value after its first piece
        self._released = asyncio.Event()
        self.delta_generation = 0  # tokens of an older generation are answered 410
        self.requests: list[tuple[str, str, bool]] = []  # method, path, Prefer sent
        self.downloads = 0
        self.in_flight_peak = 0
        self.url = ""
        self._in_flight = 0
        self._changes: list[tuple[str, str]] = []  # (immutable id, "upsert" | "removed")
        self._clock = 0
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeGraph:
        app = web.Application(middlewares=[self._gate])
        get, post = app.router.add_get, app.router.add_post
        get("/v1.0/me", self._me)
        get("/v1.0/me/mailFolders", self._top_folders)
        get("/v1.0/me/mailFolders/{folder}", self._folder)
        get("/v1.0/me/mailFolders/{folder}/childFolders", self._child_folders)
        get("/v1.0/me/mailFolders/{folder}/messages", self._list)
        get("/v1.0/me/mailFolders/{folder}/messages/delta", self._delta)
        get("/v1.0/me/messages/{id}", self._get_message)
        app.router.add_patch("/v1.0/me/messages/{id}", self._patch)
        get("/v1.0/me/messages/{id}/$value", self._value, allow_head=False)
        app.router.add_head("/v1.0/me/messages/{id}/$value", self._no_head)
        post("/v1.0/me/messages/{id}/permanentDelete", self._delete)
        post("/v1.0/me/messages/{id}/move", self._move)
        post("/v1.0/$batch", self._batch)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1.0"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # --------------------------------------------------------------- the mailbox

    def folder(self, well_known_or_name: str) -> FakeFolder:
        for folder in self.folders.values():
            if well_known_or_name in (folder.well_known, folder.name):
                return folder
        raise KeyError(well_known_or_name)

    def add_folder(self, name: str, parent: str | None = None) -> FakeFolder:
        folder = FakeFolder(classic_id()[:120], name, None, parent)
        self.folders[folder.id] = folder
        return folder

    def seed(self, mimes: list[bytes], folder: str = "inbox") -> list[FakeMessage]:
        added = []
        for mime in mimes:
            self._clock += 1
            received = (_START + timedelta(seconds=self._clock)).strftime("%Y-%m-%dT%H:%M:%SZ")
            message = FakeMessage(mime, self.folder(folder).id, received)
            self.messages.append(message)
            self._changes.append((message.id, "upsert"))
            added.append(message)
        return added

    def in_folder(self, folder: str) -> list[FakeMessage]:
        wanted = self.folder(folder).id
        return [m for m in self.messages if m.folder == wanted]

    def expire_delta_tokens(self) -> None:
        """Every delta token issued so far is answered 410 from now on."""
        self.delta_generation += 1

    def touch(self, message: FakeMessage, **changes: Any) -> None:
        """Change a message as another client would (a new changeKey, seen by delta)."""
        for name, value in changes.items():
            setattr(message, name, value)
        message.change += 1
        self._changes.append((message.id, "upsert"))

    def remove(self, message: FakeMessage) -> None:
        self.messages.remove(message)
        self._changes.append((message.id, "removed"))

    def _find(self, message_id: str) -> FakeMessage | None:
        return next((m for m in self.messages if message_id in (m.id, m.classic)), None)

    # -------------------------------------------------------------- the gate

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        prefer = PREFER in request.headers.get("Prefer", "")
        self.requests.append((request.method, request.raw_path, prefer))
        user = self._user(request.headers.get("Authorization", ""))
        if user is None:
            challenge = {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'}
            return error(401, "InvalidAuthenticationToken", "Access token is invalid", **challenge)
        if self.raw:
            status, body = self.raw.pop(0)
            return web.Response(status=status, body=body, content_type="application/json")
        if self.statuses:
            status, code = self.statuses.pop(0)
            return error(status, code, **({"Retry-After": "1"} if status in (429, 503) else {}))
        if self._in_flight >= self.concurrency:
            text = "Application is over its MailboxConcurrency limit."
            return error(429, "ApplicationThrottled", text, **{"Retry-After": "1"})
        self._in_flight += 1
        self.in_flight_peak = max(self.in_flight_peak, self._in_flight)
        try:
            request[_IMMUTABLE] = prefer and self.honour_prefer
            request[_USER] = user
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            self._in_flight -= 1

    def _user(self, authorization: str) -> str | None:
        if not authorization.startswith("Bearer "):
            return None
        token = authorization.removeprefix("Bearer ")
        if callable(self._tokens):
            return self._tokens(token)
        return self._tokens.get(token)

    def _resource(self, immutable: bool, message: FakeMessage) -> dict[str, Any]:
        # PidTagMessageSize counts MAPI properties, not the MIME that $value returns
        mapi = {"id": "Integer 0xe08", "value": str(len(message.mime) + 4096 + len(message.id))}
        return {
            "singleValueExtendedProperties": [mapi],
            "id": message.id if immutable else message.classic,
            "changeKey": message.change_key,
            "receivedDateTime": message.received,
            "internetMessageId": f"<{message.id[-12:]}@example.org>",
            "parentFolderId": message.folder,
            "isRead": message.is_read,
            "categories": list(message.categories),
        }

    def _message(self, message_id: str) -> FakeMessage | web.Response:
        if len(message_id) < 40 or not message_id.startswith("AA"):
            return error(400, "ErrorInvalidIdMalformed", "Id is malformed.")
        message = self._find(message_id)
        if message is None:
            return error(404, "ErrorItemNotFound", "The object was not found in the store.")
        return message

    # ------------------------------------------------------------------ handlers

    async def _me(self, request: web.Request) -> web.Response:
        user = request[_USER]
        return web.json_response({"userPrincipalName": user, "mail": user})

    def _folder_by(self, key: str) -> FakeFolder | None:
        found = self.folders.get(key)
        return found or next((f for f in self.folders.values() if f.well_known == key), None)

    async def _folder(self, request: web.Request) -> web.Response:
        folder = self._folder_by(request.match_info["folder"])
        if folder is None:
            return error(404, "ErrorItemNotFound", "The specified folder could not be found.")
        return web.json_response({"id": folder.id, "displayName": folder.name})

    async def _top_folders(self, request: web.Request) -> web.Response:
        return self._folders(None)

    async def _child_folders(self, request: web.Request) -> web.Response:
        folder = self._folder_by(request.match_info["folder"])
        if folder is None:
            return error(404, "ErrorItemNotFound")
        return self._folders(folder.id)

    def _folders(self, parent: str | None) -> web.Response:
        found = [f for f in self.folders.values() if f.parent == parent]
        return web.json_response({"value": [{"id": f.id, "displayName": f.name} for f in found]})

    async def _list(self, request: web.Request) -> web.Response:
        folder = self._folder_by(request.match_info["folder"])
        if folder is None:
            return error(404, "ErrorItemNotFound")
        query = request.query
        top = min(int(query.get("$top", "10")), 1000)
        skip = int(query.get("$skip", "0"))
        if self.on_page is not None:
            self.on_page(skip)
        found = [m for m in self.messages if m.folder == folder.id]
        if query.get("$orderby", "").startswith("receivedDateTime"):
            found.sort(key=lambda m: m.received)
        page = found[skip : skip + top]
        selected = select_of(query.get("$select"))
        body: dict[str, Any] = {
            "value": [pick(self._resource(request[_IMMUTABLE], m), selected) for m in page]
        }
        if skip + top < len(found):
            following = dict(query) | {"$skip": str(skip + top)}
            body["@odata.nextLink"] = link(request, following)
            if self.foreign_links:  # a hostile or broken server points the client elsewhere
                body["@odata.nextLink"] = "https://collector.example/v1.0/me/messages?$skip=1"
        return web.json_response(body)

    async def _delta(self, request: web.Request) -> web.Response:
        """messages/delta: all, then changes since a token, in pages of `odata.maxpagesize`
        (default 10) behind `$skiptoken`s; 410 for a token of an older generation."""
        folder = self._folder_by(request.match_info["folder"])
        if folder is None:
            return error(404, "ErrorItemNotFound")
        token = request.query.get("$deltatoken") or request.query.get("$skiptoken")
        parts = (token or f"{self.delta_generation}-0-{len(self._changes)}-0").split("-")
        parts += ["", "", ""][: max(0, 4 - len(parts))]
        if parts[0] != str(self.delta_generation) or not all(p.isdigit() for p in parts[1:]):
            return error(410, "SyncStateNotFound", "The sync state is no longer available.")
        since = int(parts[1])
        end = int(parts[2]) if "$skiptoken" in request.query else len(self._changes)
        offset = int(parts[3]) if "$skiptoken" in request.query else 0
        values = self._delta_values(request, folder, since, end, initial=since == 0)
        size = _max_page_size(request.headers.get("Prefer", "")) or 10
        if offset + size < len(values):
            skip = f"{self.delta_generation}-{since}-{end}-{offset + size}"
            page = {"@odata.nextLink": link(request, {"$skiptoken": skip})}
        else:
            page = {"@odata.deltaLink": link(request, {"$deltatoken": f"{parts[0]}-{end}-0-0"})}
        return web.json_response({"value": values[offset : offset + size]} | page)

    def _delta_values(
        self, request: web.Request, folder: FakeFolder, since: int, end: int, *, initial: bool
    ) -> list[dict[str, Any]]:
        values: list[dict[str, Any]] = []
        seen: set[str] = set()
        for message_id, _ in self._changes[since:end]:
            if message_id in seen:
                continue
            seen.add(message_id)
            message = self._find(message_id)
            if message is None or message.folder != folder.id:
                if not initial:
                    values.append({"id": message_id, "@removed": {"reason": "deleted"}})
                continue
            values.append(self._resource(request[_IMMUTABLE], message))
        return values

    async def _get_message(self, request: web.Request) -> web.Response:
        message = self._message(request.match_info["id"])
        if isinstance(message, web.Response):
            return message
        resource = self._resource(request[_IMMUTABLE], message)
        return web.json_response(pick(resource, select_of(request.query.get("$select"))))

    async def _no_head(self, request: web.Request) -> web.Response:
        return error(405, "ErrorInvalidRequest", "HEAD is not supported")

    async def _value(self, request: web.Request) -> web.StreamResponse:
        if self.on_value is not None:
            self.on_value(request.match_info["id"])  # e.g. another client deletes it now
        message = self._message(request.match_info["id"])
        if isinstance(message, web.Response):
            return message
        self.downloads += 1
        mime = message.mime
        if self.regenerate:  # MIME is generated on request; nothing says it is byte-stable
            mime = b"X-Generated: " + b"x" * (self.downloads % 5 + 1) + b"\r\n" + mime
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()  # no Content-Length: the size is not known ahead
        await response.prepare(request)
        for start in range(0, len(mime), 65536):
            if self.misbehave is not None and start >= 65536:
                return await self._misbehave(request, response)
            await response.write(mime[start : start + 65536])
        await response.write_eof()
        return response

    async def _misbehave(
        self, request: web.Request, response: web.StreamResponse
    ) -> web.StreamResponse:
        """After the first piece of a body: fall silent, or cut the connection."""
        if self.misbehave == "stall":
            await self._released.wait()
        elif request.transport is not None:
            request.transport.abort()
        return response

    async def _patch(self, request: web.Request) -> web.Response:
        message = self._message(request.match_info["id"])
        if isinstance(message, web.Response):
            return message
        return self._apply_patch(request[_IMMUTABLE], message, await request.json())

    def _apply_patch(
        self, immutable: bool, message: FakeMessage, body: dict[str, Any]
    ) -> web.Response:
        if self.conflicts.get(message.id, 0) > 0:
            self.conflicts[message.id] -= 1
            return error(412, "ErrorIrresolvableConflict",
                         "The send or update operation could not be performed because the "
                         "change key passed in the request does not match the current change "
                         "key for the item.")  # fmt: skip
        if "isRead" in body:
            message.is_read = bool(body["isRead"])
        if "categories" in body:
            message.categories = list(body["categories"])  # replaces the whole list
        message.change += 1
        self._changes.append((message.id, "upsert"))
        return web.json_response(self._resource(immutable, message))

    async def _delete(self, request: web.Request) -> web.Response:
        message = self._message(request.match_info["id"])
        if isinstance(message, web.Response):
            return message
        self.remove(message)
        return web.Response(status=204)

    async def _move(self, request: web.Request) -> web.Response:
        message = self._message(request.match_info["id"])
        if isinstance(message, web.Response):
            return message
        return self._apply_move(request[_IMMUTABLE], message, await request.json())

    def _apply_move(
        self, immutable: bool, message: FakeMessage, body: dict[str, Any]
    ) -> web.Response:
        target = self._folder_by(str(body.get("destinationId", "")))
        if target is None:
            return error(400, "ErrorInvalidIdMalformed", "Id is malformed.")
        message.folder = target.id
        message.classic = classic_id()  # a classic id changes on move; the immutable one stays
        message.change += 1
        self._changes.append((message.id, "upsert"))
        return web.json_response(self._resource(immutable, message), status=201)

    async def _batch(self, request: web.Request) -> web.Response:
        entries = (await request.json()).get("requests", [])
        if len(entries) > MAX_BATCH:
            return error(400, "BadRequest", "Too many requests in a batch.")
        responses = [await self._inner(request, entry) for entry in entries]
        return web.json_response({"responses": responses})

    async def _inner(self, request: web.Request, entry: dict[str, Any]) -> dict[str, Any]:
        if self.batch_throttle > 0:
            self.batch_throttle -= 1
            body = {"error": {"code": "ApplicationThrottled", "message": "MailboxConcurrency"}}
            return {"id": entry["id"], "status": 429, "headers": {"Retry-After": "1"}, "body": body}
        response = await self._dispatch(request, entry)
        text = response.text or ""
        return {
            "id": entry["id"],
            "status": response.status,
            "headers": {"Content-Type": "application/json"},
            "body": json.loads(text) if text else None,
        }

    async def _dispatch(self, request: web.Request, entry: dict[str, Any]) -> web.Response:
        method, url = entry.get("method", ""), entry.get("url", "")
        path, _, query = url.partition("?")
        parts = path.strip("/").split("/")
        prefer = PREFER in (entry.get("headers") or {}).get("Prefer", "")
        self.requests.append((method, "$batch " + url, prefer))
        immutable = prefer and self.honour_prefer
        if len(parts) < 3 or parts[:2] != ["me", "messages"]:
            return error(400, "BadRequest", "unsupported in this fake")
        message = self._message(unquote(parts[2]))
        if isinstance(message, web.Response):
            return message
        action = parts[3] if len(parts) > 3 else ""
        body = entry.get("body") or {}
        if method == "GET" and not action:
            select = select_of(dict(parse_qsl(query)).get("$select"))
            return web.json_response(pick(self._resource(immutable, message), select))
        if method == "PATCH" and not action:
            return self._apply_patch(immutable, message, body)
        if method == "POST" and action == "permanentDelete":
            self.remove(message)
            return web.Response(status=204)
        if method == "POST" and action == "move":
            return self._apply_move(immutable, message, body)
        return error(400, "BadRequest", "unsupported in this fake")


def _max_page_size(prefer: str) -> int | None:
    for preference in prefer.split(","):
        name, _, value = preference.strip().partition("=")
        if name == "odata.maxpagesize" and value.isdigit():
            return int(value)
    return None


__all__ = ["FakeFolder", "FakeGraph", "FakeMessage", "classic_id", "immutable_id", "mapi_size"]
