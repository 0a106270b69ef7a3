"""Getting a refresh token once, at `accounts add`: the browser flow and the device flow.

This module owns the two interactive grants an operator runs when adding an OAuth2 account.
The authorization code grant (RFC 6749 section 4.1) uses PKCE (RFC 7636, method S256) and a
loopback redirect on 127.0.0.1 with a port of our choosing (RFC 8252 sections 7.3 and 8.3),
so the code is only useful to the process that started the request, and `state` is checked
against cross-site request forgery (RFC 6749 section 10.12). The device authorization grant
(RFC 8628) prints a URL and a user code for a browser on any other machine and polls the
token endpoint at the interval the provider asks for. Both hand back a `Grant`; neither logs
a code or a token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlencode

from aiohttp import web

from popbridge.oauth2.client import DEVICE_GRANT, Grant, OAuthError, device_authorization
from popbridge.oauth2.client import token_request as _token_request
from popbridge.oauth2.providers import Provider

Say = Callable[[str], None]
Sleep = Callable[[float], Awaitable[None]]
DEFAULT_INTERVAL = 5.0  # RFC 8628 3.2: clients MUST use 5 seconds when none is given
SLOW_DOWN_STEP = 5.0  # RFC 8628 3.5: slow_down adds 5 seconds to every later interval
_CLOSE_PAGE = "popbridge: authorization received. You can close this window.\n"


class FlowFailed(Exception):
    """The interactive authorization did not produce tokens (the text says why)."""


def s256(verifier: str) -> str:
    """RFC 7636 4.2: BASE64URL(SHA256(ASCII(code_verifier))), without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def pkce_pair() -> tuple[str, str]:
    """RFC 7636 4.1: a verifier of 43-128 unreserved characters, and its S256 challenge."""
    verifier = secrets.token_urlsafe(64)  # 86 characters from the unreserved set
    return verifier, s256(verifier)


def authorization_url(provider: Provider, redirect_uri: str, state: str, challenge: str) -> str:
    """The address the operator opens (RFC 6749 4.1.1 with RFC 7636 4.3)."""
    if provider.authorize_url is None:
        raise FlowFailed(f"provider {provider.name!r} has no authorize_url")
    query = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": redirect_uri,
        "scope": provider.scope,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **provider.authorize_params,
    }
    joiner = "&" if "?" in provider.authorize_url else "?"
    return f"{provider.authorize_url}{joiner}{urlencode(query)}"


async def _wait_for_redirect(
    state: str, say: Callable[[int], None], *, port: int, wait: float
) -> Mapping[str, str]:
    """Serve the loopback redirect until a request carries our `state`; its query."""
    arrived: asyncio.Future[Mapping[str, str]] = asyncio.get_running_loop().create_future()

    async def redirect(request: web.Request) -> web.Response:
        given = request.query.get("state", "")
        # RFC 6749 10.12: only the answer to our own request counts; others are ignored
        if not hmac.compare_digest(given.encode(), state.encode()) or arrived.done():
            return web.Response(status=400, text="popbridge: unexpected request\n")
        arrived.set_result(dict(request.query))
        return web.Response(text=_CLOSE_PAGE)

    app = web.Application()
    app.router.add_get("/", redirect)
    runner = web.AppRunner(app, access_log=None)  # the access log would hold the code
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        say(int(runner.addresses[0][1]))
        try:
            async with asyncio.timeout(wait):
                return await arrived
        except TimeoutError:
            raise FlowFailed(f"no authorization arrived within {wait:g} s") from None
    finally:
        await runner.cleanup()


async def browser_flow(
    provider: Provider, say: Say, *, deadline: float, port: int = 0, wait: float = 300.0
) -> Grant:
    """Authorization code + PKCE with a loopback redirect; prints the URL to open."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(24)
    redirect_uri = ""

    def announce(bound: int) -> None:
        nonlocal redirect_uri
        redirect_uri = f"http://127.0.0.1:{bound}/"
        url = authorization_url(provider, redirect_uri, state, challenge)
        say(f"Open this address in a browser on this machine (or forward port {bound}):")
        say(f"  {url}")
        say(f"Waiting for the redirect to {redirect_uri} ...")

    query = await _wait_for_redirect(state, announce, port=port, wait=wait)
    if "error" in query:
        detail = query.get("error_description", "")
        raise FlowFailed(f"the provider refused: {query['error']} {detail}".rstrip())
    if not query.get("code"):
        raise FlowFailed("the redirect carried no authorization code")
    form = {
        "grant_type": "authorization_code",
        "code": query["code"],
        "redirect_uri": redirect_uri,  # RFC 6749 4.1.3: the same as in the request
        "code_verifier": verifier,
    }
    return await _exchange(provider, form, deadline)


async def _exchange(provider: Provider, form: Mapping[str, str], deadline: float) -> Grant:
    try:
        return await _token_request(provider, form, deadline=deadline)
    except OAuthError as exc:
        raise FlowFailed(f"the token endpoint refused: {exc}") from None


async def device_flow(
    provider: Provider, say: Say, *, deadline: float, sleep: Sleep = asyncio.sleep
) -> Grant:
    """RFC 8628: show the user code, then poll until it is approved, denied or expired."""
    try:
        answer = await device_authorization(provider, deadline=deadline)
    except OAuthError as exc:
        raise FlowFailed(f"the device endpoint refused: {exc}") from None
    device_code = answer.get("device_code")
    # Google names it verification_url; RFC 8628 3.2 verification_uri
    uri = answer.get("verification_uri") or answer.get("verification_url")
    if not isinstance(device_code, str) or not uri or not answer.get("user_code"):
        raise FlowFailed("the device endpoint answered without device_code, user_code or URI")
    say(f"On any device, open {uri} and enter the code {answer['user_code']}")
    if answer.get("verification_uri_complete"):
        say(f"  (or open {answer['verification_uri_complete']})")
    given = answer.get("interval")
    interval = DEFAULT_INTERVAL if given is None else max(0.0, float(given))
    loop = asyncio.get_running_loop()
    expires = loop.time() + float(answer.get("expires_in") or 900)
    form = {"grant_type": DEVICE_GRANT, "device_code": device_code}
    while True:
        await sleep(interval)
        try:
            return await _token_request(provider, form, deadline=deadline)
        except OAuthError as exc:
            if exc.error == "authorization_pending" and loop.time() < expires:
                continue  # RFC 8628 3.5: the user has not finished yet
            if exc.error == "slow_down":
                interval += SLOW_DOWN_STEP
                continue
            # access_denied, expired_token (and Microsoft's authorization_declined, ...)
            raise FlowFailed(f"device authorization failed: {exc}") from None
