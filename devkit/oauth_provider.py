"""A local fake OAuth2 provider, built from what Google and Microsoft document, for the tests.

It runs an aiohttp server on a free 127.0.0.1 port in its own thread (so blocking test code
and a Dovecot asking it to introspect tokens both reach it) and implements: the authorization
endpoint with PKCE S256 and loopback redirects (RFC 6749 4.1, RFC 7636), the token endpoint
with the authorization_code, refresh_token and device_code grants and RFC 6749 5.2 errors
(invalid_grant, invalid_client, unsupported_grant_type), the device authorization endpoint
with authorization_pending / slow_down / access_denied / expired_token (RFC 8628), and token
introspection (RFC 7662) as Dovecot's oauth2 passdb calls it. Test knobs: revoke a refresh
token, expire access tokens, rotate refresh tokens, answer 503 (`down`), never answer
(`hang`). It logs nothing: tokens must not reach the test's captured logs from here either.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    user: str
    scope: str


@dataclass
class _Refresh:
    user: str
    client_id: str
    scope: str
    revoked: bool = False


@dataclass
class _Access:
    user: str
    expires_at: float
    revoked: bool = False


@dataclass
class _Device:
    user_code: str
    client_id: str
    scope: str
    expires_at: float
    user: str | None = None
    denied: bool = False


@dataclass
class FakeOAuthProvider:
    """The provider's state and its HTTP face; `start()` it, `stop()` it."""

    clients: dict[str, str | None] = field(default_factory=lambda: {"bridge": "bridge-secret"})
    introspection_client: tuple[str, str] = ("dovecot", "dovecot-secret")
    access_lifetime: int = 3600
    device_interval: int = 0
    authorize_as: str = "alice"  # who "signs in" at the authorization endpoint
    deny: bool = False
    down: bool = False  # token and device endpoints answer 503
    hang: float = 0.0  # the token endpoint waits this long before answering
    rotate: bool = False  # each refresh returns a new refresh token and revokes the old
    slow_down_polls: int = 0
    grants: Counter[str] = field(default_factory=Counter)
    introspections: int = 0
    port: int = 0
    _codes: dict[str, _Code] = field(default_factory=dict, repr=False)
    _refresh: dict[str, _Refresh] = field(default_factory=dict, repr=False)
    _access: dict[str, _Access] = field(default_factory=dict, repr=False)
    _devices: dict[str, _Device] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---------------------------------------------------------------- test knobs

    def issue_refresh_token(self, user: str, client_id: str = "bridge", scope: str = "mail") -> str:
        token = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh[token] = _Refresh(user, client_id, scope)
        return token

    def revoke(self, refresh_token: str) -> None:
        with self._lock:
            self._refresh[refresh_token].revoked = True

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is now inactive (introspection says so)."""
        with self._lock:
            for access in self._access.values():
                access.expires_at = 0.0

    def approve(self, user_code: str, user: str) -> None:
        with self._lock:
            next(d for d in self._devices.values() if d.user_code == user_code).user = user

    def deny_device(self, user_code: str) -> None:
        with self._lock:
            next(d for d in self._devices.values() if d.user_code == user_code).denied = True

    def active(self, access_token: str) -> bool:
        """What introspection would say about `access_token`."""
        with self._lock:
            access = self._access.get(access_token)
            return access is not None and not access.revoked and time.time() < access.expires_at

    def access_tokens(self) -> list[str]:
        with self._lock:
            return list(self._access)

    def refresh_tokens(self, *, active: bool = True) -> list[str]:
        with self._lock:
            return [t for t, r in self._refresh.items() if not (active and r.revoked)]

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeOAuthProvider:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="fake-oauth", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake OAuth2 provider did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> FakeOAuthProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        app.router.add_post("/device", self._device)
        app.router.add_post("/introspect", self._introspect)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        self.port = int(runner.addresses[0][1])
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    # ---------------------------------------------------------------- endpoints

    async def _authorize(self, request: web.Request) -> web.Response:
        q = request.query
        redirect = q.get("redirect_uri", "")
        if q.get("client_id") not in self.clients or not redirect.startswith("http://127.0.0.1:"):
            return web.Response(status=400, text="bad client or redirect_uri")
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            return web.Response(status=400, text="response_type=code with PKCE S256 only")
        if self.deny:
            reply = {"error": "access_denied", "state": q.get("state", "")}
        else:
            code = "code-" + secrets.token_urlsafe(16)
            with self._lock:
                self._codes[code] = _Code(
                    q["client_id"], redirect, q.get("code_challenge", ""), self.authorize_as,
                    q.get("scope", ""),
                )  # fmt: skip
            reply = {"code": code, "state": q.get("state", "")}
        raise web.HTTPFound(f"{redirect}?{urlencode(reply)}")

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = str(form.get("grant_type", ""))
        self.grants[grant] += 1
        if self.hang:
            await asyncio.sleep(self.hang)
        if self.down:
            return web.json_response({"error": "temporarily_unavailable"}, status=503)
        client = self._client(request, form)
        if client is None:
            return _error("invalid_client", 401)
        with self._lock:
            if grant == "authorization_code":
                return self._code_grant(client, form)
            if grant == "refresh_token":
                return self._refresh_grant(client, form)
            if grant == DEVICE_GRANT:
                return self._device_grant(client, str(form.get("device_code", "")))
        return _error("unsupported_grant_type")

    def _client(self, request: web.Request, form: Any) -> str | None:
        """client_secret_post or client_secret_basic (RFC 6749 2.3.1); public clients: none."""
        client_id, secret = str(form.get("client_id", "")), form.get("client_secret")
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        if client_id not in self.clients:
            return None
        expected = self.clients[client_id]
        return client_id if expected is None or secret == expected else None

    def _code_grant(self, client: str, form: Any) -> web.Response:
        code = self._codes.pop(str(form.get("code", "")), None)  # single use (RFC 6749 4.1.2)
        if code is None or code.client_id != client:
            return _error("invalid_grant")
        if form.get("redirect_uri") != code.redirect_uri:
            return _error("invalid_grant", description="redirect_uri differs")
        verifier = str(form.get("code_verifier", "")).encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
        if digest.decode() != code.challenge:  # RFC 7636 4.6
            return _error("invalid_grant", description="PKCE verification failed")
        return self._tokens(code.user, client, code.scope, with_refresh=True)

    def _refresh_grant(self, client: str, form: Any) -> web.Response:
        found = self._refresh.get(str(form.get("refresh_token", "")))
        if found is None or found.revoked or found.client_id != client:
            return _error("invalid_grant", description="Token has been expired or revoked.")
        if "scope" in form and not set(str(form["scope"]).split()) <= set(found.scope.split()):
            return _error("invalid_scope")  # RFC 6749 6: never more than first granted
        if self.rotate:
            found.revoked = True
        return self._tokens(found.user, client, found.scope, with_refresh=self.rotate)

    def _device_grant(self, client: str, device_code: str) -> web.Response:
        device = self._devices.get(device_code)
        if device is None or device.client_id != client:
            return _error("invalid_grant")
        if time.time() > device.expires_at:
            return _error("expired_token")
        if device.denied:
            return _error("access_denied")
        if self.slow_down_polls > 0:
            self.slow_down_polls -= 1
            return _error("slow_down")
        if device.user is None:
            return _error("authorization_pending")
        del self._devices[device_code]
        return self._tokens(device.user, client, device.scope, with_refresh=True)

    def _tokens(self, user: str, client: str, scope: str, *, with_refresh: bool) -> web.Response:
        access = "at-" + secrets.token_urlsafe(24)
        self._access[access] = _Access(user, time.time() + self.access_lifetime)
        body: dict[str, Any] = {
            "access_token": access, "token_type": "Bearer",
            "expires_in": self.access_lifetime, "scope": scope,
        }  # fmt: skip
        if with_refresh:
            refresh = "rt-" + secrets.token_urlsafe(24)
            self._refresh[refresh] = _Refresh(user, client, scope)
            body["refresh_token"] = refresh
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _device(self, request: web.Request) -> web.Response:
        form = await request.post()
        if self.down:
            return web.json_response({"error": "temporarily_unavailable"}, status=503)
        client = self._client(request, form)
        if client is None:
            return _error("invalid_client", 401)
        device_code = "dc-" + secrets.token_urlsafe(24)
        user_code = f"{secrets.randbelow(10**4):04d}-{secrets.randbelow(10**4):04d}"
        with self._lock:
            self._devices[device_code] = _Device(
                user_code, client, str(form.get("scope", "")), time.time() + 600
            )
        return web.json_response({
            "device_code": device_code, "user_code": user_code,
            "verification_uri": f"{self.url}/device", "expires_in": 600,
            "interval": self.device_interval,
        })  # fmt: skip

    async def _introspect(self, request: web.Request) -> web.Response:
        """RFC 7662 2.1-2.2, POST form as Dovecot's introspection_mode = post sends it."""
        form = await request.post()
        self.introspections += 1
        expected_id, expected_secret = self.introspection_client
        if form.get("client_id") != expected_id or form.get("client_secret") != expected_secret:
            return web.json_response({"error": "invalid_client"}, status=401)
        with self._lock:
            access = self._access.get(str(form.get("token", "")))
            if access is None or access.revoked or time.time() >= access.expires_at:
                # Dovecot ignores 4xx statuses in introspection mode: refuse in the body
                return web.json_response({"active": False})
            return web.json_response({
                "active": True, "username": access.user, "token_type": "Bearer",
                "exp": int(access.expires_at), "scope": "mail",
            })  # fmt: skip


def _error(code: str, status: int = 400, description: str = "") -> web.Response:
    body = {"error": code} | ({"error_description": description} if description else {})
    return web.json_response(body, status=status)
