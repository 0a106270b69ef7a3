"""SASL mechanisms alone: message formats, strict base64, and what each refuses."""

from __future__ import annotations

import base64

import pytest

from popbridge.pop3 import sasl


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("text", ["AGFsaWNl!!AHB3", "=AAA", "AAA=BBB", "YWJ", "YW Jj", "\u00e9"])
def test_base64_is_strict(text: str) -> None:
    with pytest.raises(sasl.SaslFailed, match="invalid base64"):
        sasl.decode(text)


def test_equals_is_an_empty_initial_response_only() -> None:
    assert sasl.decode("=", initial=True) == b""
    with pytest.raises(sasl.SaslFailed):
        sasl.decode("=")


def test_plain_accepts_the_rfc_4616_form_and_long_fields() -> None:
    assert sasl.Plain().start(b"\0alice\0pw") == sasl.Outcome("alice", "pw")
    assert sasl.Plain().start(b"alice\0alice\0pw") == sasl.Outcome("alice", "pw")
    long = b"u" * 255
    assert sasl.Plain().start(b"\0" + long + b"\0" + long) == sasl.Outcome(
        long.decode(), long.decode()
    )
    assert sasl.Plain().start(None) == sasl.Challenge(b"")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"alice\0pw", "malformed"),
        (b"\0alice\0pw\0x", "malformed"),
        (b"\0\0pw", "empty user name"),
        (b"\0alice\0", "empty password"),
        (b"bob\0alice\0pw", "not permitted"),
        (b"\0\xff\0pw", "not UTF-8"),
        (b"\0" + b"u" * 2000 + b"\0pw", "too long"),
    ],
)
def test_plain_refusals(message: bytes, reason: str) -> None:
    with pytest.raises(sasl.SaslFailed, match=reason):
        sasl.Plain().start(message)


def test_login_asks_user_then_password() -> None:
    mechanism = sasl.Login()
    assert mechanism.start(None) == sasl.Challenge(b"Username:")
    assert mechanism.step(b"alice") == sasl.Challenge(b"Password:")
    assert mechanism.step(b"pw") == sasl.Outcome("alice", "pw")
    with_initial = sasl.Login()
    assert with_initial.start(b"alice") == sasl.Challenge(b"Password:")


def test_xoauth2_message_and_error_challenge() -> None:
    token = "ya29." + "t" * 3000
    outcome = sasl.XOAuth2().start(
        f"user=alice@example.org\x01auth=Bearer {token}\x01\x01".encode()
    )
    assert outcome == sasl.Outcome("alice@example.org", token, "oauth2")
    assert b'"status": "401"' in (sasl.XOAuth2().failure_challenge() or b"")
    for bad in (b"auth=Bearer x\x01\x01", b"user=a\x01auth=Basic x\x01\x01", b"user=a\x01auth\x01"):
        with pytest.raises(sasl.SaslFailed):
            sasl.XOAuth2().start(bad)


def test_oauthbearer_rfc_7628_example_and_errors() -> None:
    message = (  # RFC 7628 section 4.1
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143"
        b"\x01auth=Bearer vF9dft4qmTc2\x01\x01"
    )
    assert sasl.OAuthBearer().start(message) == sasl.Outcome(
        "user@example.com", "vF9dft4qmTc2", "oauth2"
    )
    escaped = b"n,a=a=2Cb=3Dc,\x01auth=Bearer t\x01\x01"
    assert sasl.OAuthBearer().start(escaped) == sasl.Outcome("a,b=c", "t", "oauth2")
    for bad in (
        b"x,a=u,\x01auth=Bearer t\x01\x01",
        b"n,,\x01auth=Bearer t\x01\x01",
        b"n,a=u,\x01host=h\x01\x01",
    ):
        with pytest.raises(sasl.SaslFailed):
            sasl.OAuthBearer().start(bad)
    assert sasl.OAuthBearer().failure_challenge() == b'{"status": "invalid_token"}'


def test_unknown_mechanism_is_none() -> None:
    assert sasl.mechanism("CRAM-MD5") is None
    assert isinstance(sasl.mechanism("PLAIN"), sasl.Plain)
    assert repr(sasl.Outcome("a", "secret")) == "Outcome(user='a', mechanism='password')"
