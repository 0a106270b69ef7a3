"""The IMAP backend against a scripted server: deadlines, odd replies and refusals.

This module owns the IMAP tests that need a server to misbehave on cue (`FakeImap`): silence
(our deadlines), greetings and login refusals with specific response codes, XOAUTH2 and SASL
continuations, FETCH replies in unusual shapes (conformance I-3, I-9), bursts of unsolicited
lines, and the dispose paths of servers without UIDPLUS, MOVE or a trash folder.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from backends.imap import ImapBackend, create, logins
from backends.imap.protocol import ImapProtocol
from devkit.fake_imap import FakeImap, Handler, never, reply
from popbridge.contract import Backend, Credentials, Disposition, DispositionKind, Mailbox
from popbridge.errors import (
    AuthFailed,
    BackendFailure,
    BackendUnavailable,
    ConfigError,
    MessageGone,
)
from tests.backends.contract import read_all

ALICE = Credentials("alice", "pw")
EXPUNGE = Disposition(DispositionKind.EXPUNGE)


def backend(server: FakeImap, **overrides: Any) -> Backend:
    table = {"type": "imap", "host": "127.0.0.1", "port": server.port, "tls": "none"}
    return create(table | {"timeout": 2, "connect_timeout": 2} | overrides, source="fake.toml")


async def opened(server: FakeImap, **overrides: Any) -> Mailbox:
    return await backend(server, **overrides).open(ALICE)


# -------------------------------------------------------------- deadlines


async def test_silent_server_hits_the_connect_deadline() -> None:
    async with FakeImap(greeting="") as server:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await opened(server, connect_timeout=0.3)
        assert time.monotonic() - started < 1.5


async def test_unanswered_command_hits_the_command_deadline() -> None:
    async with FakeImap(replies={"AUTHENTICATE": never}) as server:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await opened(server, timeout=0.3)
        assert time.monotonic() - started < 1.5


async def test_a_timed_out_connection_is_never_reused() -> None:
    fetch = reply("* 1 FETCH (UID 1 BODY[] {2}", "hi)", "{tag} OK")
    async with FakeImap(replies={"UID SEARCH": never, "UID FETCH": fetch}) as server:
        mailbox = await opened(server, timeout=0.3)
        with pytest.raises(BackendUnavailable):
            await mailbox.list()
        # the old connection may still owe a reply: the next command goes over a new one
        assert b"".join(await read_all(mailbox, "42.1")) == b"hi"
        await mailbox.close()
    assert server.verbs.count("UID SEARCH") == 1 and server.verbs.count("AUTHENTICATE") == 2


async def test_connection_closed_mid_command_is_unavailable() -> None:
    def hang_up(_server: FakeImap, _tag: str, _args: str) -> bytes:
        raise ConnectionResetError

    async with FakeImap(replies={"UID SEARCH": hang_up}) as server:
        mailbox = await opened(server, timeout=5)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await mailbox.list()
        assert time.monotonic() - started < 1  # noticed the close, did not wait for the deadline
        await mailbox.close()


async def test_idle_connection_closed_by_the_server_is_unavailable_at_once() -> None:
    async with FakeImap() as server:
        mailbox = await opened(server, timeout=5)
        server.drop_clients()
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await mailbox.list()
        assert time.monotonic() - started < 0.5
        await mailbox.close()
    assert "UID SEARCH" not in server.verbs


async def dropped_after_listing(server: FakeImap) -> tuple[Mailbox, str]:
    """A mailbox opened and listed, whose connection the server then closed (autologout)."""
    mailbox = await opened(server, fetch_chunk=1024)
    (entry,) = await mailbox.list()
    server.drop_clients()
    await asyncio.sleep(0.05)
    return mailbox, entry.identity


async def test_retr_after_the_server_closed_the_idle_connection_logs_in_again() -> None:
    body = bytes(range(48, 58)) * 300
    async with FakeImap(replies=partial_fetches(body, 1024)) as server:
        mailbox, identity = await dropped_after_listing(server)
        assert b"".join(await read_all(mailbox, identity)) == body  # conformance I-17
        await mailbox.close()
    verbs = server.verbs
    assert verbs.count("AUTHENTICATE") == 2 and verbs.count("EXAMINE") == 2
    assert verbs.count("UID SEARCH") == 1  # the snapshot is kept: no second listing
    assert verbs.index("EXAMINE", verbs.index("AUTHENTICATE", 1)) < verbs.index("UID FETCH", 6)


async def test_a_new_uidvalidity_after_reconnecting_touches_nothing() -> None:
    body = b"x" * 100
    replies = partial_fetches(body, 1024) | {"UID STORE": reply("{tag} OK")}
    async with FakeImap(replies=replies) as server:
        mailbox, identity = await dropped_after_listing(server)
        server.uidvalidity = 43  # the folder was recreated: UID 5 may be another message
        with pytest.raises(MessageGone):
            await read_all(mailbox, identity)
        result = await mailbox.dispose([identity], EXPUNGE)
        await mailbox.close()
    assert result.failed == {identity} and "UIDVALIDITY changed" in result.detail
    # the listing's one (sizes not yet exact are measured when STAT or LIST asks); none after
    assert "UID STORE" not in server.verbs and server.verbs.count("UID FETCH") == 1


async def test_a_refused_login_again_is_unavailable_not_bad_credentials() -> None:
    async with FakeImap(replies=partial_fetches(b"x" * 100, 1024)) as server:
        mailbox, identity = await dropped_after_listing(server)
        server.replies["AUTHENTICATE"] = reply("{tag} NO [AUTHENTICATIONFAILED] expired")
        with pytest.raises(BackendUnavailable, match="logging in again failed"):
            await read_all(mailbox, identity)
        await mailbox.close()


async def test_quit_after_the_server_closed_the_connection_still_disposes() -> None:
    replies = {
        "UID STORE": reply("{tag} OK"), "UID EXPUNGE": reply("{tag} OK"),
        "UID SEARCH": reply("* SEARCH", "{tag} OK"),
    }  # fmt: skip
    async with FakeImap(replies=replies) as server:
        mailbox = await opened(server)
        server.drop_clients()
        await asyncio.sleep(0.05)
        result = await mailbox.dispose(["42.3"], EXPUNGE)
        await mailbox.close()
    assert result.ok
    assert server.verbs.count("AUTHENTICATE") == 2 and "UID EXPUNGE" in server.verbs


# ---------------------------------------------------- greeting and login


@pytest.mark.parametrize(
    ("greeting", "error"),
    [("* BYE too many connections", BackendUnavailable), ("* PREAUTH welcome", BackendFailure)],
)
async def test_unusable_greeting(greeting: str, error: type[Exception]) -> None:
    async with FakeImap(greeting=greeting) as server:
        with pytest.raises(error):
            await opened(server)
    assert server.received == []


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ("{tag} NO [AUTHENTICATIONFAILED] Authentication failed.", AuthFailed),
        ("{tag} NO [AUTHORIZATIONFAILED] not you", AuthFailed),
        ("{tag} NO [EXPIRED] password expired", AuthFailed),
        ("{tag} BAD weird", AuthFailed),
        ("{tag} NO [UNAVAILABLE] try later", BackendUnavailable),
        ("{tag} NO [PRIVACYREQUIRED] use TLS", BackendFailure),
    ],
)
async def test_login_refusals_map_to_errors(answer: str, error: type[Exception]) -> None:
    async with FakeImap(replies={"AUTHENTICATE": reply(answer)}) as server:
        with pytest.raises(error):
            await opened(server)


async def test_login_disabled_without_plain_never_sends_login() -> None:
    async with FakeImap(capabilities="IMAP4rev1 LOGINDISABLED AUTH=XOAUTH2") as server:
        for auth in ("auto", "login", "plain"):
            with pytest.raises(BackendFailure):
                await opened(server, auth=auth)
    assert "LOGIN" not in server.verbs
    assert "AUTHENTICATE" not in server.verbs


async def test_plain_without_sasl_ir_answers_the_continuation() -> None:
    server = FakeImap(capabilities="IMAP4rev1 LOGINDISABLED AUTH=PLAIN UIDPLUS")

    def authenticate(fake: FakeImap, tag: str, args: str) -> bytes:
        assert args == "PLAIN"
        fake.continuation = lambda line: (
            f"{tag} OK done\r\n" if line == b"AGFsaWNlAHB3\r\n" else f"{tag} NO bad\r\n"
        ).encode()
        return b"+ \r\n"

    server.replies["AUTHENTICATE"] = authenticate
    async with server:
        mailbox = await opened(server)
        await mailbox.close()
    assert base64.b64decode(server.received[1].strip()) == b"\0alice\0pw"
    assert "LOGIN" not in server.verbs


def _xoauth2(fake: FakeImap, tag: str, args: str) -> bytes:
    mechanism, encoded = args.split(" ")
    assert mechanism == "XOAUTH2"
    user, auth, *_ = base64.b64decode(encoded).split(b"\x01")
    if auth == b"auth=Bearer good-token" and user == "user=\u00fc@example.org".encode():
        return f"{tag} OK [CAPABILITY {fake.capabilities}] Logged in\r\n".encode()
    # Dovecot/Gmail style: a JSON error challenge, answered by an empty line, then NO.
    fake.continuation = lambda line: (
        f"{tag} NO [AUTHENTICATIONFAILED] failed\r\n" if line == b"\r\n" else f"{tag} BAD\r\n"
    ).encode()
    return b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n"


async def test_xoauth2_success_and_error_challenge() -> None:
    caps = "IMAP4rev1 AUTH=XOAUTH2 SASL-IR UIDPLUS"
    async with FakeImap(capabilities=caps, replies={"AUTHENTICATE": _xoauth2}) as server:
        good = Credentials("\u00fc@example.org", "good-token", mechanism="oauth2")
        mailbox = await backend(server).open(good)
        await mailbox.close()
        bad = Credentials("\u00fc@example.org", "expired", mechanism="oauth2")
        started = time.monotonic()
        with pytest.raises(AuthFailed):
            await backend(server).open(bad)
        assert time.monotonic() - started < 1  # the challenge was answered, not timed out


async def test_xoauth2_needs_the_server_to_offer_it() -> None:
    async with FakeImap() as server:
        with pytest.raises(BackendFailure):
            await backend(server).open(Credentials("a", "token", mechanism="oauth2"))
    assert "AUTHENTICATE" not in server.verbs


async def test_starttls_refused_when_not_offered() -> None:
    async with FakeImap() as server:
        with pytest.raises(BackendFailure):
            await opened(server, tls="starttls")
    assert "AUTHENTICATE" not in server.verbs


PASSWORD = 'p"a\\ss w0rd'
TOKEN = "ya29.secret-token"


@pytest.mark.parametrize(
    ("capabilities", "credentials", "secrets"),
    [
        ("IMAP4rev1", Credentials("alice", PASSWORD), [PASSWORD, 'p\\"a\\\\ss']),
        (
            "IMAP4rev1 AUTH=PLAIN SASL-IR",
            Credentials("alice", PASSWORD),
            [PASSWORD, logins.sasl_plain("alice", PASSWORD)],
        ),
        (
            "IMAP4rev1 AUTH=XOAUTH2 SASL-IR",
            Credentials("alice", TOKEN, mechanism="oauth2"),
            [TOKEN, logins.xoauth2("alice", TOKEN)],
        ),
    ],
)
async def test_no_secret_or_body_reaches_the_logs(
    caplog: pytest.LogCaptureFixture,
    capabilities: str,
    credentials: Credentials,
    secrets: list[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    marker = "BODY-MARKER-7f3a"
    body = f"Subject: s\r\n\r\n{marker}\r\n"
    fetch = reply(f"* 1 FETCH (UID 1 BODY[] {{{len(body)}}}", body.rstrip("\r\n"), ")", "{tag} OK")
    async with FakeImap(capabilities=capabilities, replies={"UID FETCH": fetch}) as server:
        mailbox = await backend(server).open(credentials)
        assert b"".join(await read_all(mailbox, "42.1")) == body.encode()
        await mailbox.close()
    sent = b"".join(server.received).decode()
    logged = caplog.text + "".join(str(record.args) for record in caplog.records)
    assert any(secret in sent for secret in secrets)  # the searched forms are the real ones
    for secret in (*secrets, marker):
        assert secret not in logged
        assert repr(secret.encode())[2:-1] not in logged  # as aioimaplib would log bytes


# --------------------------------------------------------- odd FETCH replies


async def test_listing_tolerates_any_item_order_and_unsolicited_lines() -> None:
    header = "Message-ID: <x@y>\r\n\r\n"
    replies = {
        "UID SEARCH": reply("* SEARCH 3 5 7", "* 9 EXISTS", "{tag} OK done"),
        "UID FETCH": reply(
            "* 1 FETCH (RFC822.SIZE 45274 UID 3)",
            "* 4 FETCH (FLAGS (\\Seen))",
            f'* 2 FETCH (INTERNALDATE " 1-Feb-2024 10:00:00 +0100" UID 5 RFC822.SIZE 10 '
            f"BODY[HEADER.FIELDS (MESSAGE-ID)] {{{len(header)}}}",
            header.removesuffix("\r\n"),
            ")",
            "* 1 EXPUNGE",
            "* 3 FETCH (UID 7 FLAGS () RFC822.SIZE 99)",
            "* 8 FETCH (UID 8 RFC822.SIZE 5)",
            "{tag} OK done",
        ),
    }
    async with FakeImap(replies=replies) as server:
        mailbox = await opened(server)
        listed = await mailbox.list()
        await mailbox.close()
    assert [(m.identity, m.size) for m in listed] == [("42.3", 45274), ("42.5", 10), ("42.7", 99)]
    assert listed[1].message_id == "<x@y>"
    assert listed[1].received == datetime(2024, 2, 1, 9, 0, tzinfo=UTC)


async def test_survives_a_burst_of_thousands_of_unsolicited_lines() -> None:
    burst = ["* 1 EXPUNGE"] * 3000
    replies = {"UID SEARCH": reply(*burst, "* SEARCH 1 2", "{tag} OK done"),
               "UID FETCH": reply("* 1 FETCH (UID 1 RFC822.SIZE 3)", "{tag} OK")}  # fmt: skip
    async with FakeImap(replies=replies) as server:
        mailbox = await opened(server)
        assert [m.identity for m in await mailbox.list()] == ["42.1"]
        await mailbox.close()


async def test_ok_without_body_data_is_message_gone_and_the_session_survives() -> None:
    replies = {
        "UID FETCH": reply("{tag} OK FETCH completed"),
        "UID SEARCH": reply("* SEARCH", "{tag} OK done"),
    }
    async with FakeImap(replies=replies) as server:
        mailbox = await opened(server)
        with pytest.raises(MessageGone):
            await read_all(mailbox, "42.5")
        with pytest.raises(MessageGone):
            await read_all(mailbox, "42.5", body_lines=3)
        assert await mailbox.list() == []
        await mailbox.close()


async def test_quoted_body_form_is_read_exactly() -> None:
    fetch = reply('* 1 FETCH (UID 5 BODY[] "Subject: a * b \\"q\\" \\\\ ")', "{tag} OK")
    async with FakeImap(replies={"UID FETCH": fetch}) as server:
        mailbox = await opened(server)
        assert await read_all(mailbox, "42.5") == [b'Subject: a * b "q" \\ ']
        await mailbox.close()


def partial_fetches(body: bytes, most: int) -> dict[str, Handler]:
    """A server with one message, UID 5, that answers a partial FETCH with `most` octets."""

    def fetch(_server: FakeImap, tag: str, args: str) -> bytes:
        if "RFC822.SIZE" in args:
            return f"* 1 FETCH (UID 5 RFC822.SIZE {len(body)})\r\n{tag} OK\r\n".encode()
        offset = int(args.split("<")[1].split(".")[0])
        piece = body[offset : offset + most]
        head = f"* 1 FETCH (UID 5 BODY[]<{offset}> {{{len(piece)}}}\r\n".encode()
        return head + piece + f")\r\n{tag} OK\r\n".encode()

    return {"UID FETCH": fetch, "UID SEARCH": reply("* SEARCH 5", "{tag} OK")}


async def test_partial_fetches_continue_when_the_server_returns_less_than_asked() -> None:
    body = bytes(range(48, 58)) * 300  # 3,000 octets, listed as such; the server caps at 1,000
    replies = partial_fetches(body, 1000)
    async with FakeImap(replies=replies) as server:
        mailbox = await opened(server, fetch_chunk=2048)
        (entry,) = await mailbox.list()
        pieces = await read_all(mailbox, entry.identity)
        assert pieces == [body[:1000], body[1000:2000], body[2000:]]
        await mailbox.close()


async def test_the_next_piece_is_asked_for_before_this_one_is_handed_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 3,000 octets in pieces of 1,024, ending in CRLF (so the listed size is the upstream's)
    body = (bytes(range(48, 58)) * 300)[:-2] + b"\r\n"
    events: list[str] = []
    send = ImapProtocol.send

    def recording_send(self: ImapProtocol, line: str, scrub: str | None = None) -> None:
        if "BODY.PEEK[]<" in line:
            events.append("asked " + line.split("<")[1].split(".")[0])
        send(self, line, scrub)

    monkeypatch.setattr(ImapProtocol, "send", recording_send)
    async with FakeImap(replies=partial_fetches(body, 1024)) as server:
        mailbox = await opened(server, fetch_chunk=1024)
        (entry,) = await mailbox.list()
        events.clear()  # the listing read the last two octets
        async for piece in mailbox.fetch(entry.identity):
            events.append(f"handed {len(piece)}")  # the caller would encode and send it now
        await mailbox.close()
    # the server works on the next piece while the caller handles this one
    assert events == ["asked 0", "asked 1024", "handed 1024", "asked 2048", "handed 1024",
                      "handed 952"]  # fmt: skip


async def test_malformed_fetch_reply_is_backend_failure() -> None:
    fetch = reply("* 1 FETCH (UID 5 BODY[] ", "{tag} OK")
    async with FakeImap(replies={"UID FETCH": fetch}) as server:
        mailbox = await opened(server)
        with pytest.raises(BackendFailure):
            await read_all(mailbox, "42.5")
        await mailbox.close()


# ------------------------------------------------------------ dispositions


async def test_without_uidplus_expunge_only_flags() -> None:
    replies = {"UID STORE": reply("{tag} OK"), "UID SEARCH": reply("* SEARCH", "{tag} OK")}
    async with FakeImap(capabilities="IMAP4rev1 AUTH=PLAIN SASL-IR", replies=replies) as server:
        mailbox = await opened(server)
        result = await mailbox.dispose(["42.3", "42.4", "42.9"], EXPUNGE)
        await mailbox.close()
    assert result.ok
    assert any(
        line.endswith(b"UID STORE 3:4,9 +FLAGS.SILENT (\\Deleted)\r\n") for line in server.received
    )
    assert any(line.endswith(b"UID SEARCH UID 3:4,9 NOT DELETED\r\n") for line in server.received)
    assert not [verb for verb in server.verbs if "EXPUNGE" in verb or verb == "CLOSE"]


async def test_no_trash_folder_fails_every_identity_and_touches_nothing() -> None:
    listing = reply(
        '* LIST (\\HasNoChildren) "/" INBOX', '* LIST () "/" "Deleted Items"', "{tag} OK"
    )
    async with FakeImap(replies={"LIST": listing}) as server:
        mailbox = await opened(server)
        result = await mailbox.dispose(["42.3", "42.4"], Disposition(DispositionKind.TRASH))
        await mailbox.close()
    assert result.failed == frozenset({"42.3", "42.4"})
    assert "Trash" in result.detail
    assert not {"UID STORE", "UID MOVE", "UID COPY", "UID EXPUNGE"} & set(server.verbs)


async def test_trash_found_by_attribute_and_moved_with_uid_move() -> None:
    listing = reply('* LIST () "/" INBOX', '* LIST (\\Trash) "/" "Deleted Items"', "{tag} OK")
    replies = {
        "LIST": listing,
        "UID MOVE": reply("{tag} OK"),
        "UID SEARCH": reply("* SEARCH", "{tag} OK"),
    }
    async with FakeImap(replies=replies) as server:
        mailbox = await opened(server)
        assert (await mailbox.dispose(["42.3"], Disposition(DispositionKind.TRASH))).ok
        await mailbox.close()
    assert any(line.endswith(b'LIST "" "*" RETURN (SPECIAL-USE)\r\n') for line in server.received)
    assert any(line.endswith(b'UID MOVE 3 "Deleted Items"\r\n') for line in server.received)


async def test_copy_fallback_without_move_and_verification_reports_survivors() -> None:
    replies = {
        "UID COPY": reply("{tag} OK"), "UID STORE": reply("{tag} OK"),
        "UID EXPUNGE": reply("{tag} OK"), "UID SEARCH": reply("* SEARCH 4", "{tag} OK"),
    }  # fmt: skip
    async with FakeImap(
        capabilities="IMAP4rev1 AUTH=PLAIN SASL-IR UIDPLUS", replies=replies
    ) as server:
        mailbox = await opened(server)
        how = Disposition(DispositionKind.MOVE, folder="Archiv/\u00dcbersicht")
        result = await mailbox.dispose(["42.3", "42.4"], how)
        await mailbox.close()
    assert result.failed == frozenset({"42.4"})
    verbs = server.verbs
    assert verbs.index("UID COPY") < verbs.index("UID STORE") < verbs.index("UID EXPUNGE")
    assert any(
        line.endswith(b'UID COPY 3:4 "Archiv/&ANw-bersicht"\r\n') for line in server.received
    )


async def test_uidvalidity_change_fails_all_and_touches_nothing() -> None:
    async with FakeImap() as server:
        mailbox = await opened(server)
        server.uidvalidity = 43
        result = await mailbox.dispose(["42.3"], Disposition(DispositionKind.SEEN))
        await mailbox.close()
    assert result.failed == frozenset({"42.3"})
    assert "UIDVALIDITY" in result.detail
    assert "UID STORE" not in server.verbs


async def test_invalid_keyword_is_refused_before_the_wire() -> None:
    async with FakeImap() as server:
        mailbox = await opened(server)
        with pytest.raises(BackendFailure):
            await mailbox.list(hidden_keyword="bad keyword)")
        result = await mailbox.dispose(
            ["42.3"], Disposition(DispositionKind.KEYWORD, keyword="\\Seen")
        )
        await mailbox.close()
    assert result.failed == frozenset({"42.3"})
    assert not {"UID STORE", "UID SEARCH"} & set(server.verbs)


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"host": "h", "colour": "red"}, "backend.colour"),
        ({"host": "h", "tls": "maybe"}, "backend.tls"),
        ({"host": "h", "auth": "cram"}, "backend.auth"),
        ({"host": "h", "port": 0}, "backend.port"),
        ({"host": "h", "ca_file": "/nonexistent/ca.pem"}, "backend.ca_file"),
        ({"host": "h", "fetch_chunk": 10}, "backend.fetch_chunk"),
        ({"host": "h", "folder": "a\nb"}, "backend.folder"),
        ({}, "backend.host"),
    ],
)
def test_config_errors_name_file_and_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^cfg\.toml: {key}: "):
        create({"type": "imap", **table}, source="cfg.toml")


def test_config_defaults_and_cleartext_warning(caplog: pytest.LogCaptureFixture) -> None:
    implicit = create({"type": "imap", "host": "mail.example.org"}, source="c.toml")
    assert isinstance(implicit, ImapBackend)
    assert (implicit.settings.port, implicit.settings.tls, implicit.settings.folder) == (
        993, "implicit", "INBOX"
    )  # fmt: skip
    assert implicit.settings.fetch_chunk == 1 << 20
    with caplog.at_level(logging.WARNING):
        plain = create({"host": "mail.example.org", "tls": "none"}, source="c.toml")
    assert isinstance(plain, ImapBackend)
    assert plain.settings.port == 143
    assert "not loopback" in caplog.text
