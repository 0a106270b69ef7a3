"""The engine alone: parsing, the state table, line limits, STLS and SASL transitions."""

from __future__ import annotations

import ast
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popbridge.pop3 import commands as c
from popbridge.pop3.engine import (
    MAX_STRIKES,
    NEED_DATA,
    Pop3Engine,
    ProtocolError,
    Rejected,
    State,
)
from popbridge.pop3.replies import Continue, Err, Ok, encode


def feed(engine: Pop3Engine, data: bytes) -> c.Command | Rejected:
    engine.receive(data)
    event = engine.next_event()
    assert event is not NEED_DATA
    return event  # type: ignore[return-value]


def logged_in() -> Pop3Engine:
    engine = Pop3Engine()
    assert feed(engine, b"USER a\r\n") == c.User("a")
    engine.send(Ok())
    assert isinstance(feed(engine, b"PASS b\r\n"), c.Pass)
    engine.send(Ok())
    assert engine.state is State.TRANSACTION
    return engine


def test_engine_imports_no_io_or_backend_module() -> None:
    forbidden = {"asyncio", "ssl", "socket", "aioimaplib", "aiohttp", "backends", "selectors"}
    package = pathlib.Path(__file__).parents[2] / "popbridge" / "pop3"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & forbidden, f"{path.name} imports {names}"


@pytest.mark.parametrize(
    ("line", "command"),
    [
        (b"stat", c.Stat()),
        (b"StAt", c.Stat()),
        (b"LIST", c.List()),
        (b"LIST 7", c.List(7)),
        (b"UIDL 12", c.Uidl(12)),
        (b"RETR 1", c.Retr(1)),
        (b"TOP 2 0", c.Top(2, 0)),
        (b"TOP 1 99999999", c.Top(1, 99999999)),
        (b"TOP 1 " + b"7" * 300, c.Top(1, c.BEYOND_ANY)),
        (b"RETR 12345678901", c.Retr(12345678901)),
        (b"RETR 0000000000000000000000042", c.Retr(42)),
        (b"DELE " + b"1" * 19, c.Dele(c.BEYOND_ANY)),
        (b"DELE 3", c.Dele(3)),
        (b"NOOP", c.Noop()),
        (b"RSET", c.Rset()),
        (b"QUIT", c.Quit()),
        (b"CAPA", c.Capa()),
        (b"STLS", c.Stls()),
        (b"USER j\xc3\xb6rg", c.User("jörg")),
        (b"PASS my secret  pw", c.Pass("my secret  pw")),
        (b"AUTH PLAIN", c.Auth("PLAIN")),
        (b"AUTH plain AGEAYg==", c.Auth("PLAIN", "AGEAYg==")),
        (b"LIST 1 ", c.List(1)),
        (b"APOP mrose c4c9", c.Apop()),
    ],
)
def test_valid_lines_parse(line: bytes, command: c.Command) -> None:
    assert c.parse_command(line) == command


@pytest.mark.parametrize(
    "line",
    [
        b"RETR 1_0",
        b"RETR +1",
        "RETR \u0661".encode(),
        "RETR \u00b2".encode(),
        b"RETR 0x1",
        b"RETR -1",
        b"RETR",
        b"RETR 1 2",
        b"TOP 1",
        b"TOP 1 -1",
        b"TOP 1 x",
        b"LIST  1",
        b"STAT x",
        b"XYZZ",
        b"STATS",
        b"",
        b"ST",
        b"US\x00ER a",
        b"USER a\rb",
        b"USER",
        b"USER a b",
        b"USER \xff",
        b"PASS",
        b"NOOP \xc3\xa9",
        b"AUTH a b c",
        b"USER " + b"x" * 256,
        b"[X",
        b"DELE \t1",
    ],
)
def test_invalid_lines_are_rejected_without_echo(line: bytes) -> None:
    parsed = c.parse_command(line)
    assert isinstance(parsed, c.Invalid)
    assert line.decode("latin-1") not in parsed.reason or not line
    assert not parsed.reason.startswith("[")


@given(st.binary(max_size=40))
def test_parser_never_raises(line: bytes) -> None:
    parsed = c.parse_command(line)
    assert isinstance(parsed, c.Invalid) or type(parsed).__module__ == c.__name__


@pytest.mark.parametrize(
    "line", [b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"NOOP", b"RSET", b"TOP 1 1", b"UIDL"]
)
def test_transaction_commands_are_refused_before_login(line: bytes) -> None:
    engine = Pop3Engine()
    event = feed(engine, line + b"\r\n")
    assert isinstance(event, Rejected)
    assert engine.send(event.reply).startswith(b"-ERR ")
    assert engine.state is State.AUTHORIZATION


@pytest.mark.parametrize("line", [b"USER a", b"PASS b", b"APOP a b", b"AUTH PLAIN", b"STLS"])
def test_authorization_commands_are_refused_after_login(line: bytes) -> None:
    engine = logged_in()
    assert isinstance(feed(engine, line + b"\r\n"), Rejected)
    assert engine.state is State.TRANSACTION


def test_pass_must_immediately_follow_a_successful_user() -> None:
    engine = Pop3Engine()
    assert isinstance(feed(engine, b"PASS x\r\n"), Rejected)
    engine.send(Err("x"))
    feed(engine, b"USER a\r\n")
    engine.send(Ok())
    feed(engine, b"CAPA\r\n")
    engine.send(Ok("", ()))
    assert isinstance(feed(engine, b"PASS x\r\n"), Rejected)
    engine.send(Err("x"))
    feed(engine, b"USER a\r\n")
    engine.send(Err("refused"))
    assert isinstance(feed(engine, b"PASS x\r\n"), Rejected)


def test_pass_carries_the_user_the_engine_accepted() -> None:
    # the USER name lives in the engine only: the session gets it with PASS
    engine = Pop3Engine()
    feed(engine, b"USER alice\r\n")
    engine.send(Ok())
    event = feed(engine, b"PASS s3cret\r\n")
    assert event == c.Pass("s3cret", user="alice")
    assert "s3cret" not in repr(event)


def test_tls_makes_the_engine_forget_a_user_from_before() -> None:
    engine = Pop3Engine()
    feed(engine, b"USER alice\r\n")
    engine.send(Ok())
    feed(engine, b"STLS\r\n")
    engine.send(Ok())
    engine.discard_plaintext()
    engine.tls_established()
    assert isinstance(feed(engine, b"PASS x\r\n"), Rejected)  # RFC 2595 §4


def test_pipelined_commands_come_one_at_a_time_in_order() -> None:
    engine = logged_in()
    engine.receive(b"STAT\r\nLIST\r\nBOGUS\r\nNOOP\r\n")
    seen = []
    while (event := engine.next_event()) is not NEED_DATA:
        seen.append(event)
        engine.send(event.reply if isinstance(event, Rejected) else Ok())
    assert seen[0] == c.Stat() and seen[1] == c.List() and isinstance(seen[2], Rejected)
    assert seen[3] == c.Noop()


def test_next_event_before_reply_is_a_caller_bug() -> None:
    engine = Pop3Engine()
    engine.receive(b"CAPA\r\nCAPA\r\n")
    engine.next_event()
    with pytest.raises(ProtocolError):
        engine.next_event()


def test_lf_only_line_ends_are_accepted() -> None:
    assert feed(Pop3Engine(), b"CAPA\n") == c.Capa()


def test_command_of_255_octets_is_accepted() -> None:
    line = b"USER " + b"u" * 248 + b"\r\n"
    assert len(line) == 255
    assert feed(Pop3Engine(), line) == c.User("u" * 248)


def test_overlong_line_is_answered_once_and_its_tail_never_executed() -> None:
    engine = logged_in()
    engine.receive(b"NOOP" + b"A" * 100_000)
    event = engine.next_event()
    assert isinstance(event, Rejected) and event.reply.text == "line too long"
    engine.send(event.reply)
    engine.receive(b"A" * 50_000 + b"\r\nNOOP\r\n")
    assert engine.next_event() == c.Noop()


def test_long_auth_lines_are_accepted_up_to_the_sasl_cap() -> None:
    token = b"A" * 4000
    assert feed(Pop3Engine(), b"AUTH XOAUTH2 " + token + b"\r\n") == c.Auth(
        "XOAUTH2", token.decode()
    )
    assert isinstance(feed(Pop3Engine(), b"AUTH XOAUTH2 " + b"A" * 20000 + b"\r\n"), Rejected)


def test_repeated_errors_close_the_connection() -> None:
    engine = Pop3Engine()
    for _ in range(MAX_STRIKES - 1):
        event = feed(engine, b"BOGUS\r\n")
        assert isinstance(event, Rejected) and not event.close
        engine.send(event.reply)
    event = feed(engine, b"BOGUS\r\n")
    assert isinstance(event, Rejected) and event.close
    assert engine.state is State.CLOSED


def test_stls_ok_discards_pipelined_plaintext() -> None:
    engine = Pop3Engine()
    assert feed(engine, b"STLS\r\nUSER evil\r\nPASS x\r\n") == c.Stls()
    engine.send(Ok("Begin TLS negotiation"))
    assert engine.tls_pending and engine.next_event() is NEED_DATA
    engine.discard_plaintext()
    engine.receive(b"CAPA\r\n")  # the first command inside TLS may arrive before we notice
    engine.tls_established()
    assert engine.next_event() == c.Capa()
    engine.send(Ok("", ()))
    engine.receive(b"PASS x\r\n")
    assert isinstance(engine.next_event(), Rejected)


def test_sasl_challenge_makes_the_next_line_a_response() -> None:
    engine = Pop3Engine()
    feed(engine, b"AUTH PLAIN\r\n")
    assert engine.send(Continue()) == b"+ \r\n"
    assert feed(engine, b"*\r\n") == c.SaslResponse("*")
    engine.send(Err("cancelled"))
    assert not engine.in_sasl
    assert feed(engine, b"CAPA\r\n") == c.Capa()


def test_quit_in_transaction_enters_update_then_closes() -> None:
    engine = logged_in()
    feed(engine, b"QUIT\r\n")
    assert engine.state is State.UPDATE
    engine.send(Ok("bye"))
    # mypy keeps the narrowing to UPDATE across send(), which changes the state
    assert engine.state is State.CLOSED  # type: ignore[comparison-overlap]
    assert engine.next_event() is NEED_DATA


@given(st.lists(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E))))
def test_data_lines_are_stuffed_one_by_one(lines: list[str]) -> None:
    """The joined encoding equals the plain one: each line, "." doubled at its start."""
    one_by_one = b"".join(
        (b"." if line.startswith(".") else b"") + line.encode() + b"\r\n" for line in lines
    )
    assert encode(Ok("x", tuple(lines))) == b"+OK x\r\n" + one_by_one + b".\r\n"


def test_greeting_has_no_apop_timestamp() -> None:
    greeting = Pop3Engine.greeting()
    assert greeting.startswith(b"+OK") and b"<" not in greeting and len(greeting) <= 512


def test_reply_encoding_rules() -> None:
    assert encode(Ok("x", ("1 2", ".hidden"))) == b"+OK x\r\n1 2\r\n..hidden\r\n.\r\n"
    assert encode(Ok("x", ())) == b"+OK x\r\n.\r\n"
    assert encode(Ok("x", ("",))) == b"+OK x\r\n\r\n.\r\n"
    for broken in ("a\r\nb", "a\nb", "a\rb", "a\r"):
        with pytest.raises(ValueError, match="line end"):
            encode(Ok("x", ("1", broken)))
    with pytest.raises(UnicodeEncodeError):
        encode(Ok("x", ("é",)))
    with pytest.raises(ValueError):
        encode(Err("[fake] code"))
    with pytest.raises(ValueError):
        encode(Ok("x" * 600))
