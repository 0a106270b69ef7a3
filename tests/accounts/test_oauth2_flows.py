"""The interactive flows against the fake provider: browser (PKCE, loopback) and device code."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from devkit.oauth_provider import FakeOAuthProvider
from popbridge.errors import BackendUnavailable
from popbridge.oauth2 import FlowFailed, Grant, browser_flow, device_flow
from popbridge.oauth2.flows import authorization_url, pkce_pair, s256
from tests.accounts.conftest import provider_for
from tests.accounts.odd_server import answering


def test_s256_matches_rfc_7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128 and re.fullmatch(r"[A-Za-z0-9._~-]+", verifier)
    assert challenge == s256(verifier)


def test_authorization_url_carries_pkce_state_and_extra_parameters(fake: FakeOAuthProvider) -> None:
    provider = dataclasses.replace(
        provider_for(fake),
        authorize_url=f"{fake.url}/authorize?tenant=x",
        authorize_params={"access_type": "offline", "prompt": "consent"},
    )
    url = authorization_url(provider, "http://127.0.0.1:5/", "st", "ch")
    query = parse_qs(urlsplit(url).query)
    assert query["tenant"] == ["x"] and query["state"] == ["st"]
    assert query["code_challenge"] == ["ch"] and query["code_challenge_method"] == ["S256"]
    assert query["access_type"] == ["offline"] and query["redirect_uri"] == ["http://127.0.0.1:5/"]
    with pytest.raises(FlowFailed, match="no authorize_url"):
        authorization_url(dataclasses.replace(provider, authorize_url=None), "r", "s", "c")


class Screen:
    """What a flow printed, and a way to wait for a line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.lines.append(text)

    async def find(self, pattern: str) -> re.Match[str]:
        for _ in range(500):
            for line in self.lines:
                if found := re.search(pattern, line):
                    return found
            await asyncio.sleep(0.01)
        raise AssertionError(f"{pattern!r} never printed: {self.lines}")


async def browse(url: str) -> tuple[int, str]:
    """The operator's browser: follow the provider's redirect to our loopback listener."""
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def test_browser_flow_gets_a_refresh_token(fake: FakeOAuthProvider) -> None:
    screen = Screen()
    flow = asyncio.create_task(browser_flow(provider_for(fake), screen, deadline=5))
    url = (await screen.find(r"(http://\S+/authorize\?\S+)")).group(1)
    status, page = await browse(url)
    grant = await flow
    assert status == 200 and "You can close this window" in page
    assert grant.refresh_token in fake.refresh_tokens()
    assert fake.grants["authorization_code"] == 1


async def test_browser_flow_ignores_requests_without_our_state(fake: FakeOAuthProvider) -> None:
    screen = Screen()
    flow = asyncio.create_task(browser_flow(provider_for(fake), screen, deadline=5))
    url = (await screen.find(r"(http://\S+/authorize\?\S+)")).group(1)
    port = (await screen.find(r"forward port (\d+)")).group(1)
    status, _ = await browse(f"http://127.0.0.1:{port}/?code=forged&state=guess")
    assert status == 400 and not flow.done()
    await browse(url)
    assert (await flow).refresh_token is not None


async def test_browser_flow_refused_by_the_user(fake: FakeOAuthProvider) -> None:
    fake.deny = True
    screen = Screen()
    flow = asyncio.create_task(browser_flow(provider_for(fake), screen, deadline=5))
    await browse((await screen.find(r"(http://\S+/authorize\?\S+)")).group(1))
    with pytest.raises(FlowFailed, match="access_denied"):
        await flow


async def test_browser_flow_gives_up_after_waiting(fake: FakeOAuthProvider) -> None:
    with pytest.raises(FlowFailed, match=r"no authorization arrived within 0\.2 s"):
        await browser_flow(provider_for(fake), Screen(), deadline=5, wait=0.2)


async def start_browser_flow(fake: FakeOAuthProvider) -> tuple[asyncio.Task[Grant], str, str]:
    """A running browser flow, its authorization URL and its loopback address with state."""
    screen = Screen()
    flow = asyncio.create_task(browser_flow(provider_for(fake), screen, deadline=5))
    url = (await screen.find(r"(http://\S+/authorize\?\S+)")).group(1)
    query = parse_qs(urlsplit(url).query)
    return flow, url, f"{query['redirect_uri'][0]}?state={query['state'][0]}"


async def test_browser_flow_with_a_bad_or_missing_code(fake: FakeOAuthProvider) -> None:
    flow, _, back = await start_browser_flow(fake)
    await browse(f"{back}&code=made-up")
    with pytest.raises(FlowFailed, match="invalid_grant"):
        await flow
    flow, _, back = await start_browser_flow(fake)
    await browse(back)
    with pytest.raises(FlowFailed, match="no authorization code"):
        await flow


class Polls:
    """The device flow's sleep: records intervals and plays the user at a given poll."""

    def __init__(self, act: object = None, at: int = 2) -> None:
        self.intervals: list[float] = []
        self.act, self.at = act, at

    async def __call__(self, seconds: float) -> None:
        self.intervals.append(seconds)
        if len(self.intervals) == self.at and callable(self.act):
            self.act()


async def test_device_flow_polls_until_approved(fake: FakeOAuthProvider) -> None:
    screen = Screen()
    code: list[str] = []
    polls = Polls(lambda: fake.approve(code[0], "alice"), at=3)

    def say(text: str) -> None:
        screen(text)
        if found := re.search(r"enter the code (\S+)", text):
            code.append(found.group(1))

    grant = await device_flow(provider_for(fake), say, deadline=5, sleep=polls)
    assert grant.refresh_token in fake.refresh_tokens()
    assert fake.grants["urn:ietf:params:oauth:grant-type:device_code"] == 3
    assert polls.intervals == [0, 0, 0]
    assert any(f"{fake.url}/device" in line for line in screen.lines)


async def test_device_flow_slows_down_when_asked(fake: FakeOAuthProvider) -> None:
    fake.slow_down_polls = 2

    def approve_all() -> None:
        for device in fake._devices.values():
            fake.approve(device.user_code, "alice")

    polls = Polls(approve_all)
    await device_flow(provider_for(fake), Screen(), deadline=5, sleep=polls)
    assert polls.intervals == [0, 5, 10]  # RFC 8628 3.5: +5 s per slow_down, kept


async def test_device_flow_denied_or_expired(fake: FakeOAuthProvider) -> None:
    def deny_all() -> None:
        for device in fake._devices.values():
            fake.deny_device(device.user_code)

    polls = Polls(deny_all, at=1)
    with pytest.raises(FlowFailed, match="access_denied"):
        await device_flow(provider_for(fake), Screen(), deadline=5, sleep=polls)

    def expire() -> None:
        for device in fake._devices.values():
            device.expires_at = 0

    with pytest.raises(FlowFailed, match="expired_token"):
        await device_flow(provider_for(fake), Screen(), deadline=5, sleep=Polls(expire, at=1))


async def test_device_flow_provider_problems(fake: FakeOAuthProvider) -> None:
    provider = provider_for(fake)
    async with answering(400, {"error": "invalid_scope"}) as url:
        with pytest.raises(FlowFailed, match="invalid_scope"):
            await device_flow(dataclasses.replace(provider, device_url=url), Screen(), deadline=5)
    async with answering(200, {"device_code": "d"}) as url:
        with pytest.raises(FlowFailed, match="without device_code"):
            await device_flow(dataclasses.replace(provider, device_url=url), Screen(), deadline=5)
    fake.down = True
    with pytest.raises(BackendUnavailable):
        await device_flow(provider, Screen(), deadline=5)


async def test_device_flow_google_style_answer(fake: FakeOAuthProvider) -> None:
    """Google says verification_url; an RFC 8628 server may add verification_uri_complete."""
    answer = {
        "device_code": "d", "user_code": "U-1", "verification_url": "https://g.example/device",
        "verification_uri_complete": "https://g.example/device?c=U-1", "expires_in": 60,
    }  # fmt: skip
    screen = Screen()
    async with answering(200, answer) as url:
        provider = dataclasses.replace(provider_for(fake), device_url=url)
        with pytest.raises(FlowFailed, match="invalid_grant"):  # the fake knows no code "d"
            await device_flow(provider, screen, deadline=5, sleep=Polls())
    assert "https://g.example/device and enter the code U-1" in screen.lines[0]
    assert "https://g.example/device?c=U-1" in screen.lines[1]
