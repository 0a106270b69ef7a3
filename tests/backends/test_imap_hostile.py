"""The IMAP backend against a hostile upstream: no secret in any log, bounded replies.

This module owns two promises that must hold whatever the server sends. No password, token
or SASL response reaches a log record (ours, aioimaplib's, or asyncio's own exception
handler) when the server answers LOGIN or AUTHENTICATE out of protocol, echoes the secret
back, or sends lines aioimaplib cannot place: the connection is discarded with a scrubbed
line. And no literal or response line larger than `max_literal_size` is accepted: the
connection is discarded with BackendFailure as soon as the announcement or the line says so.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from backends.imap import create, logins
from backends.imap.backend import ImapBackend
from backends.imap.protocol import ImapProtocol
from devkit.fake_imap import FakeImap, Handler, reply
from popbridge.contract import Backend, Credentials
from popbridge.errors import AuthFailed, BackendFailure, BridgeError, ConfigError

PASSWORD = "Pw-7f3a9c0e"  # distinctive, so no other log text contains it by chance
TOKEN = "ya29.tok-8d1b5e2f"
USER = "alice"
LOGIN_ONLY = "IMAP4rev1 UIDPLUS"  # no AUTH=PLAIN: the backend sends LOGIN
PLAIN_IR = "IMAP4rev1 AUTH=PLAIN SASL-IR UIDPLUS"
PLAIN = "IMAP4rev1 AUTH=PLAIN UIDPLUS"  # no SASL-IR: the response follows a "+"
XOAUTH2_IR = "IMAP4rev1 AUTH=XOAUTH2 SASL-IR UIDPLUS"


def secret_forms() -> list[str]:
    """Every form in which the secrets go on the wire, and every base64 run of them."""
    return [
        logins.sasl_plain(USER, PASSWORD),
        logins.xoauth2(USER, TOKEN),
        base64.b64encode(PASSWORD.encode()).decode(),
        *logins.secret_forms(PASSWORD),
        *logins.secret_forms(TOKEN),
    ]


class Everything(logging.Handler):
    """Every record of every logger, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """What was logged anywhere during the test, asyncio's exception handler included."""
    handler = Everything()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.texts
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def capture_loop_errors(texts: list[str]) -> None:
    """Route the loop's exception handler through `texts` too (and then the default)."""
    loop = asyncio.get_running_loop()

    def handler(inner: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        texts.append(repr(context))
        inner.default_exception_handler(context)

    loop.set_exception_handler(handler)


def assert_no_secret(texts: list[str]) -> None:
    gc.collect()  # "exception was never retrieved" is reported when collected
    for text in texts:
        for secret in secret_forms():
            assert secret not in text, text


def backend(server: FakeImap, **overrides: Any) -> Backend:
    table = {"type": "imap", "host": "127.0.0.1", "port": server.port, "tls": "none"}
    return create(table | {"timeout": 2, "connect_timeout": 2} | overrides, source="t.toml")


def wrong_tag(echo: bool = False) -> Handler:
    """A tagged OK under a tag the client never sent (aioimaplib raises Abort naming the
    pending command), optionally echoing what the client sent."""

    def handler(_server: FakeImap, _tag: str, args: str) -> bytes:
        said = f" you said {args}" if echo else ""
        return f"ZZ99 OK welcome{said}\r\n".encode()

    return handler


def echoes_in_garbage(_server: FakeImap, tag: str, args: str) -> bytes:
    """Lines aioimaplib logs as it receives them: untagged noise carrying the secret."""
    return f"{args}\r\n+ {args}\r\n* {args}\r\n{tag} NO [AUTHENTICATIONFAILED] {args}\r\n".encode()


CASES = [
    pytest.param(LOGIN_ONLY, "LOGIN", wrong_tag(), "password", id="login-wrong-tag"),
    pytest.param(LOGIN_ONLY, "LOGIN", wrong_tag(echo=True), "password", id="login-echo"),
    pytest.param(PLAIN_IR, "AUTHENTICATE", wrong_tag(), "password", id="plain-ir-wrong-tag"),
    pytest.param(PLAIN_IR, "AUTHENTICATE", wrong_tag(echo=True), "password", id="plain-echo"),
    pytest.param(XOAUTH2_IR, "AUTHENTICATE", wrong_tag(), "oauth2", id="xoauth2-wrong-tag"),
    pytest.param(LOGIN_ONLY, "LOGIN", echoes_in_garbage, "password", id="login-garbage"),
    pytest.param(PLAIN_IR, "AUTHENTICATE", echoes_in_garbage, "password", id="plain-garbage"),
    pytest.param(XOAUTH2_IR, "AUTHENTICATE", echoes_in_garbage, "oauth2", id="xoauth2-garbage"),
]


@pytest.mark.parametrize(("caps", "verb", "handler", "mechanism"), CASES)
async def test_out_of_protocol_login_replies_log_no_secret(
    logged: list[str], caps: str, verb: str, handler: Handler, mechanism: str
) -> None:
    capture_loop_errors(logged)
    secret = TOKEN if mechanism == "oauth2" else PASSWORD
    async with FakeImap(capabilities=caps, replies={verb: handler}) as server:
        with pytest.raises(BridgeError):
            await backend(server).open(Credentials(USER, secret, mechanism))
        await asyncio.sleep(0.1)  # let the transport's own error reporting run
    assert verb in server.verbs
    assert_no_secret(logged)


async def test_a_wrong_tag_discards_the_connection_with_a_scrubbed_line(
    logged: list[str],
) -> None:
    capture_loop_errors(logged)
    async with FakeImap(capabilities=LOGIN_ONLY, replies={"LOGIN": wrong_tag()}) as server:
        with pytest.raises(BackendFailure, match="out-of-protocol"):
            await backend(server).open(Credentials(USER, PASSWORD))
    assert any("discarding IMAP connection" in text for text in logged)
    assert_no_secret(logged)


async def test_a_continuation_answer_out_of_protocol_logs_no_secret(logged: list[str]) -> None:
    """Without SASL-IR the response goes after the server's "+"; the server then answers
    with a tag the client never used."""
    capture_loop_errors(logged)

    def authenticate(server: FakeImap, _tag: str, _args: str) -> bytes:
        server.continuation = lambda line: b"QQ1 NO [ALERT] " + line
        return b"+ \r\n"

    async with FakeImap(capabilities=PLAIN, replies={"AUTHENTICATE": authenticate}) as server:
        with pytest.raises(BackendFailure):
            await backend(server, auth="plain").open(Credentials(USER, PASSWORD))
    assert server.verbs == ["AUTHENTICATE"]
    assert_no_secret(logged)


async def test_an_echoed_secret_in_a_refusal_is_scrubbed(logged: list[str]) -> None:
    refuse = reply("{tag} NO [AUTHENTICATIONFAILED] bad password " + PASSWORD)
    async with FakeImap(capabilities=LOGIN_ONLY, replies={"LOGIN": refuse}) as server:
        with pytest.raises(AuthFailed) as caught:
            await backend(server).open(Credentials(USER, PASSWORD))
    assert PASSWORD not in str(caught.value)
    assert_no_secret(logged)


def test_credential_commands_render_without_credentials() -> None:
    async def render() -> list[str]:
        protocol = ImapProtocol(asyncio.get_running_loop(), lambda _exc: None)
        login = protocol.command("LOGIN", logins.login_arguments(USER, PASSWORD), uid=False)
        plain = protocol.command(
            "AUTHENTICATE", ("PLAIN", logins.sasl_plain(USER, PASSWORD)), uid=False
        )
        assert PASSWORD in login.wire() and logins.sasl_plain(USER, PASSWORD) in plain.wire()
        return [repr(login), str(login), repr(plain), str(plain), f"{[login, plain]}"]

    shown = asyncio.run(render())
    assert_no_secret(shown)
    assert all("LOGIN" in text or "AUTHENTICATE PLAIN" in text for text in shown)


# ------------------------------------------------------------ bounded replies


def huge_literal(_server: FakeImap, _tag: str, _args: str) -> bytes:
    """A literal announced far beyond any message, then data that never ends."""
    return b"* 1 FETCH (UID 1 BODY[] {99999999999}\r\n" + b"x" * 65536


def endless_line(_server: FakeImap, _tag: str, _args: str) -> bytes:
    """A SEARCH line that never ends: 3 MiB without a line end."""
    return b"* SEARCH" + b" 1" * (3 << 19)


@pytest.mark.parametrize(
    ("verb", "answer"),
    [("UID SEARCH", huge_literal), ("UID SEARCH", endless_line)],
    ids=["literal", "line"],
)
async def test_oversized_replies_are_refused_and_the_connection_dropped(
    verb: str, answer: Handler
) -> None:
    async with FakeImap(replies={verb: answer}) as server:
        mailbox = await backend(server, max_literal_size=1 << 20, timeout=5).open(
            Credentials(USER, PASSWORD)
        )
        try:
            with pytest.raises(BackendFailure, match="max_literal_size"):
                await mailbox.list()
            for _ in range(100):  # the server sees the connection closed
                if all(writer.is_closing() for writer in server._writers):
                    break
                await asyncio.sleep(0.01)
            assert all(writer.is_closing() for writer in server._writers)
        finally:
            await mailbox.close()


async def test_a_literal_within_the_bound_is_read() -> None:
    body = b"y" * 200_000
    fetch = reply("* 1 FETCH (UID 1 BODY[] {200000}", body.decode() + ")", "{tag} OK")
    async with FakeImap(replies={"UID FETCH": fetch}) as server:
        mailbox = await backend(server, max_literal_size=1 << 20).open(Credentials(USER, PASSWORD))
        try:
            pieces = [piece async for piece in mailbox.fetch("42.1")]
        finally:
            await mailbox.close()
    assert b"".join(pieces) == body


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"max_literal_size": 1000}, "max_literal_size"),
        ({"max_literal_size": 1 << 20, "fetch_chunk": 2 << 20}, "fetch_chunk"),
    ],
)
def test_max_literal_size_is_checked(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create({"type": "imap", "host": "127.0.0.1", **table}, source="t.toml")


def test_max_literal_size_has_a_generous_default() -> None:
    backend = create({"type": "imap", "host": "127.0.0.1"}, source="t.toml")
    assert isinstance(backend, ImapBackend)
    settings = backend.settings
    assert settings.max_literal_size >= 4 * (64 << 20)  # well above the largest fetch_chunk
