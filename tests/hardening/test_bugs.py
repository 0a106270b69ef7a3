"""Bugs the hardening work found, each proven by a test that failed until it was fixed.

Both are fixed; the tests stay as regressions. `pop3_model.KNOWN_BUGS` and
`fuzz.harness.KNOWN_BUGS` are where a newly found bug is parked, with its failing test here,
until it is fixed; both are empty now, so the stateful test and the fuzzer check everything.
"""

from __future__ import annotations

import base64

from devkit.dialogue import assert_dialogue, exchange, make_session
from devkit.memory_backend import MemoryBackend

AUTH_FAILED = b"-ERR [AUTH] authentication failed\r\n"


def alice() -> MemoryBackend:
    backend = MemoryBackend()
    backend.user("alice", "secret", b"Subject: a\r\n\r\nhi\r\n").token = "tok"
    return backend


async def test_auth_listing_does_not_log_the_client_in() -> None:
    # `AUTH` alone only lists the mechanisms (RFC 5034 section 4 / RFC 1734 discovery); the
    # engine treats its +OK like a successful login and enters TRANSACTION with no maildrop:
    # STAT then crashes the session, and USER/PASS are refused, so the client cannot log in.
    # Fix: in Pop3Engine._apply, enter TRANSACTION on +OK to AUTH only when it named a
    # mechanism (`isinstance(command, c.Auth) and command.mechanism is not None`).
    session, out = make_session(alice())
    await assert_dialogue(
        session, out,
        "C: AUTH", "S: +OK SASL mechanisms follow",
        "S: PLAIN", "S: LOGIN", "S: XOAUTH2", "S: OAUTHBEARER", "S: .",
        "C: STAT", "S: -ERR command not valid in this state",
        "C: USER alice", "S: +OK send PASS",
        "C: PASS secret", "S: +OK maildrop has 1 messages (18 octets)",
    )  # fmt: skip


async def test_last_failed_oauth_login_still_gets_its_err() -> None:
    # RFC 7628 section 3.2.2: a refused token gets an error challenge, the client answers it,
    # and only then does the server send the failure. On the max_auth_failures-th failure
    # the session closes right after the challenge, so the client never gets its -ERR.
    # Fix: in Session.handle, close for too many failures only after a reply that is not a
    # Continue (`not isinstance(reply, Continue)`), i.e. after the final -ERR.
    session, out = make_session(alice())
    bad = b"AUTH XOAUTH2 " + base64.b64encode(b"user=alice\x01auth=Bearer nope\x01\x01")
    for attempt in range(3):
        challenge, closed = await exchange(session, out, bad + b"\r\n")
        assert challenge.startswith(b"+ ey") and not closed, attempt
        final, closed = await exchange(session, out, b"AQ==\r\n")
        assert final == AUTH_FAILED, attempt
    assert closed
