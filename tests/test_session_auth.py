"""SASL AUTH and throttling through the session, over the in-memory backend."""

from __future__ import annotations

import base64

import pytest

from devkit.dialogue import assert_dialogue, exchange, make_session
from devkit.memory_backend import MemoryBackend
from popbridge.session.session import Services, SessionPolicy
from popbridge.session.throttle import Throttle, ThrottlePolicy

OK_LOGIN = "S: +OK maildrop has 1 messages (18 octets)"
AUTH_FAILED = "S: -ERR [AUTH] authentication failed"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


GOOD_PLAIN = b64(b"\0alice\0secret")
WRONG_PLAIN = b64(b"\0alice\0wrong")
INVALID_TOKEN = b64(b'{"status": "invalid_token"}')


@pytest.fixture
def backend() -> MemoryBackend:
    backend = MemoryBackend()
    backend.user("alice", "secret", b"Subject: a\r\n\r\nhi\r\n").token = "tok-" + "x" * 4000
    return backend


async def test_plain_with_initial_response(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(
        session,
        out,
        f"C: AUTH PLAIN {GOOD_PLAIN}",
        OK_LOGIN,
        "C: AUTH PLAIN x",
        "S: -ERR command not valid in this state",
    )


async def test_plain_after_empty_challenge(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(session, out, "C: AUTH PLAIN", "S: + ", f"C: {GOOD_PLAIN}", OK_LOGIN)


async def test_cancel_then_other_commands_work(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, "C: AUTH PLAIN", "S: + ", "C: *", "S: -ERR authentication cancelled",
        "C: NOOP", "S: -ERR command not valid in this state",
        "C: USER alice", "S: +OK send PASS", "C: PASS secret", OK_LOGIN,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("AUTH PLAIN =", "S: -ERR malformed PLAIN message"),
        ("AUTH PLAIN AGFsaWNl!!AHB3", "S: -ERR invalid base64"),
        (
            f"AUTH PLAIN {b64(b'bob' + bytes(1) + b'alice' + bytes(1) + b'secret')}",
            "S: -ERR authorization identity not permitted",
        ),
        (f"AUTH PLAIN {WRONG_PLAIN}", AUTH_FAILED),
        ("AUTH FOOBAR", "S: -ERR unsupported authentication mechanism"),
    ],
)
async def test_plain_refusals(backend: MemoryBackend, line: str, reply: str) -> None:
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, f"C: {line}", reply, "C: CAPA", "S~ \\+OK.*", *(["S~ .*"] * 10)
    )


async def test_login_mechanism(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, "C: AUTH LOGIN", f"S: + {b64(b'Username:')}", f"C: {b64(b'alice')}",
        f"S: + {b64(b'Password:')}", f"C: {b64(b'secret')}", OK_LOGIN,
    )  # fmt: skip


async def test_xoauth2_token_is_passed_upstream(backend: MemoryBackend) -> None:
    token = backend.stores["alice"].token
    session, out = make_session(backend)
    message = b64(f"user=alice\x01auth=Bearer {token}\x01\x01".encode())
    assert len(message) > 4000  # a long AUTH line, as real clients send
    await assert_dialogue(session, out, f"C: AUTH XOAUTH2 {message}", OK_LOGIN)
    assert backend.logins == ["oauth2"]


async def test_bad_xoauth2_token_gets_the_json_challenge_then_err(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    message = b64(b"user=alice\x01auth=Bearer nope\x01\x01")
    challenge = b64(b'{"status": "401", "schemes": "bearer", "scope": "mail"}')
    await assert_dialogue(
        session, out, f"C: AUTH XOAUTH2 {message}", f"S: + {challenge}", "C: ", AUTH_FAILED
    )


async def test_oauthbearer_after_challenge_with_4k_response(backend: MemoryBackend) -> None:
    token = backend.stores["alice"].token
    session, out = make_session(backend)
    response = b64(f"n,a=alice,\x01auth=Bearer {token}\x01\x01".encode())
    await assert_dialogue(session, out, "C: AUTH OAUTHBEARER", "S: + ", f"C: {response}", OK_LOGIN)


async def test_bad_oauthbearer_then_kvsep_gets_err(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    response = b64(b"n,a=alice,\x01auth=Bearer bad\x01\x01")
    await assert_dialogue(
        session, out, f"C: AUTH OAUTHBEARER {response}", f"S: + {INVALID_TOKEN}",
        "C: AQ==", AUTH_FAILED,
    )  # fmt: skip


async def test_auth_without_mechanism_lists_them(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(
        session, out, "C: AUTH", "S: +OK SASL mechanisms follow", "S: PLAIN", "S: LOGIN",
        "S: XOAUTH2", "S: OAUTHBEARER", "S: .",
    )  # fmt: skip


async def test_no_sasl_without_tls_unless_opted_in(backend: MemoryBackend) -> None:
    session, out = make_session(backend, SessionPolicy(plaintext_auth=False))
    capa, _ = await exchange(session, out, b"CAPA\r\n")
    assert b"SASL" not in capa and b"USER" not in capa
    await assert_dialogue(
        session, out, f"C: AUTH PLAIN {GOOD_PLAIN}",
        "S: -ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections",
    )  # fmt: skip
    assert backend.attempts == 0
    secure, out2 = make_session(backend, SessionPolicy(plaintext_auth=False), secure=True)
    capa, _ = await exchange(secure, out2, b"CAPA\r\n")
    assert b"\r\nSASL PLAIN LOGIN XOAUTH2 OAUTHBEARER\r\n" in capa and b"\r\nUSER\r\n" in capa


async def test_listener_can_restrict_mechanisms(backend: MemoryBackend) -> None:
    policy = SessionPolicy(plaintext_auth=True, sasl_mechanisms=("PLAIN",))
    session, out = make_session(backend, policy)
    await assert_dialogue(
        session, out, "C: AUTH XOAUTH2 =", "S: -ERR unsupported authentication mechanism"
    )


async def test_stls_refused_where_not_configured(backend: MemoryBackend) -> None:
    session, out = make_session(backend)
    await assert_dialogue(session, out, "C: STLS", "S: -ERR TLS not available on this port")
    secure, out2 = make_session(backend, SessionPolicy(starttls=True), secure=True)
    await assert_dialogue(secure, out2, "C: STLS", "S: -ERR command not permitted when TLS active")


async def test_user_lockout_refuses_before_trying_upstream(backend: MemoryBackend) -> None:
    throttle = Throttle(ThrottlePolicy(base_delay=0, max_failures_per_user=2))
    services = Services(backend=backend, throttle=throttle)
    for _ in range(2):
        session, out = make_session(backend, services=services)
        await assert_dialogue(session, out, "C: USER alice", "S~ .*", "C: PASS wrong", AUTH_FAILED)
    attempts = backend.attempts
    session, out = make_session(backend, services=services)
    await assert_dialogue(
        session, out, "C: USER Alice", "S~ .*", "C: PASS secret",
        "S: -ERR [AUTH] too many failed logins, account temporarily locked",
    )  # fmt: skip
    assert backend.attempts == attempts  # the upstream was not asked


async def test_address_lockout_is_sys_temp(backend: MemoryBackend) -> None:
    throttle = Throttle(ThrottlePolicy(base_delay=0, max_failures_per_address=1))
    services = Services(backend=backend, throttle=throttle)
    session, out = make_session(backend, services=services)
    await assert_dialogue(
        session, out, "C: USER x", "S~ .*", "C: PASS y", AUTH_FAILED, "C: USER alice", "S~ .*",
        "C: PASS secret", "S: -ERR [SYS/TEMP] too many failed logins from your address, try later",
    )  # fmt: skip


async def test_login_delay_is_advertised_and_enforced(backend: MemoryBackend) -> None:
    services = Services(
        backend=backend, throttle=Throttle(ThrottlePolicy(base_delay=0, login_delay=300))
    )
    first, out = make_session(backend, services=services)
    capa, _ = await exchange(first, out, b"CAPA\r\n")
    assert b"\r\nLOGIN-DELAY 300\r\n" in capa
    await assert_dialogue(
        first, out, "C: USER alice", "S~ .*", "C: PASS secret", OK_LOGIN, "C: QUIT", "S: +OK bye"
    )
    again, out2 = make_session(backend, services=services)
    await assert_dialogue(
        again, out2, "C: USER alice", "S~ .*", "C: PASS secret",
        "S: -ERR [LOGIN-DELAY] minimum time between logins has not passed",
    )  # fmt: skip
    assert backend.opened[-1].closed
