"""Hypothesis drives the POP3 engine and session against the model in `pop3_model`.

Each step sends one to six client commands in a single feed, cut into arbitrary pieces
(pipelining, RFC 2449 section 6.6): USER/PASS, SASL exchanges, every TRANSACTION command with
good and bad message numbers, commands in the wrong state, and random garbage lines. Every
reply line must be exactly what the model says. Between steps the connection may drop, a new
one may open, mail may arrive upstream, another client may expunge a message, or a second
client may try the locked maildrop. Upstream must always hold what the model holds: QUIT
removes exactly the DELE'd messages, nothing else ever removes anything.
"""

from __future__ import annotations

import asyncio
import itertools
import string

from hypothesis import HealthCheck, assume, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from devkit.dialogue import exchange, make_session, quick_services
from devkit.memory_backend import MemoryBackend
from popbridge.pop3 import commands as c
from tests.hardening.pop3_model import CRLF, KnownBug, Line, Model, Stored, b64

NAMES = ["alice", "Alice", "bob", "j\u00f6rg"]
PASSWORDS = ["secret", "wrong", "secret ", "se cret"]
NUMBERS = st.integers(0, 7) | st.just(9999999999)
ENDINGS = st.sampled_from([CRLF, b"\n"])
CASES = st.sampled_from([str.upper, str.lower, str.title])
VERBS = "STAT LIST UIDL RETR TOP DELE NOOP RSET CAPA QUIT APOP STLS USER".split()  # noqa: SIM905
KEYWORDS = [b"USER", b"PASS", b"RETR", b"TOP", b"LIST", b"DELE", b"STAT", b"UIDL", b"QUIT"]

MESSAGE_LINE = st.tuples(
    st.sampled_from(["", ".", "..", "Subject: x", "a.b", "From: y"]),
    st.text(string.ascii_letters + " .", max_size=12),
    st.sampled_from(["\r\n", "\n", "\r", ""]),
).map(lambda t: (t[0] + t[1] + t[2]).encode())
MESSAGE = st.lists(MESSAGE_LINE, max_size=8).map(b"".join)


@st.composite
def simple(draw: st.DrawFn) -> list[Line]:
    """A well-formed command in varied case, line end and trailing spaces."""
    verb = draw(st.sampled_from(VERBS))
    args: list[object] = []
    if verb in ("LIST", "UIDL"):
        args = [draw(st.none() | NUMBERS)]
    elif verb in ("RETR", "DELE"):
        args = [draw(NUMBERS)]
    elif verb == "TOP":
        args = [draw(NUMBERS), draw(st.integers(0, 4) | st.just(99999999))]
    elif verb == "USER":
        args = [draw(st.sampled_from(NAMES))]
    words = [draw(CASES)(verb), *(str(a) for a in args if a is not None)]
    if verb == "APOP":
        words.append("alice c4c9334bac560ecc979e58001b3e22fb")
    text = " ".join(words) + " " * draw(st.integers(0, 2))
    return [Line(text.encode(), ("cmd", verb, *args), draw(ENDINGS))]


@st.composite
def password(draw: st.DrawFn) -> list[Line]:
    secret = draw(st.sampled_from(PASSWORDS))
    return [Line(f"{draw(CASES)('PASS')} {secret}".encode(), ("cmd", "PASS", secret))]


@st.composite
def login(draw: st.DrawFn) -> list[Line]:
    """USER then PASS, mostly right: most examples should get as far as TRANSACTION."""
    user = draw(st.just("alice") | st.sampled_from(NAMES))
    secret = draw(st.just("secret") | st.sampled_from(PASSWORDS))
    return [
        Line(f"USER {user}".encode(), ("cmd", "USER", user), draw(ENDINGS)),
        Line(f"PASS {secret}".encode(), ("cmd", "PASS", secret)),
    ]


def payloads(mechanism: str) -> st.SearchStrategy[tuple[bytes, tuple[object, ...]]]:
    """(base64 text, meaning) of one SASL response for `mechanism`."""
    names, secrets = st.sampled_from(NAMES), st.sampled_from([*PASSWORDS, "tok"])
    errors = {
        "PLAIN": [(b"bob\0alice\0secret", "authorization identity not permitted"),
                  (b"\0alice", "malformed PLAIN message"), (b"\0\0secret", "empty user name"),
                  (b"\0alice\0", "empty password"), (b"\0\xff\0x", "user name is not UTF-8")],
        "XOAUTH2": [(b"auth=Bearer t\x01\x01", "malformed XOAUTH2 message"),
                    (b"user=alice\x01auth=Basic x\x01\x01", "malformed bearer token")],
        "OAUTHBEARER": [(b"x,a=alice,\x01auth=Bearer t\x01\x01", "malformed OAUTHBEARER message")],
    }.get(mechanism, [])  # fmt: skip
    shapes = {
        "PLAIN": lambda u, p: b"\0" + u + b"\0" + p,
        "XOAUTH2": lambda u, p: b"user=" + u + b"\x01auth=Bearer " + p + b"\x01\x01",
        "OAUTHBEARER": lambda u, p: b"n,a=" + u + b",\x01auth=Bearer " + p + b"\x01\x01",
    }
    good = st.tuples(names, secrets).map(
        lambda t: (b64(shapes[mechanism](t[0].encode(), t[1].encode())), ("creds", *t))
    )
    bad = st.sampled_from(errors).map(lambda e: (b64(e[0]), ("error", e[1])))
    not_base64 = st.just((b"AGFs!!aWNl", ("error", "invalid base64")))
    return good | bad | not_base64 if errors else not_base64


@st.composite
def sasl(draw: st.DrawFn) -> list[Line]:
    """AUTH with or without an initial response, LOGIN's two steps, `*`, or AUTH alone."""
    mechanism = draw(st.sampled_from(["PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER", "CRAM-MD5", ""]))
    keyword = draw(CASES)("AUTH")
    if mechanism in ("CRAM-MD5", ""):  # unknown mechanism; AUTH alone lists them
        text = f"{keyword} {mechanism}".strip().encode()
        return [Line(text, ("cmd", "AUTH", mechanism or None, None))]
    steps: list[tuple[bytes, tuple[object, ...]]]
    if mechanism == "LOGIN":
        user, secret = draw(st.sampled_from(NAMES)), draw(st.sampled_from(PASSWORDS))
        steps = [
            (b64(user.encode()), ("login-user", user)),
            (b64(secret.encode()), ("login-pass", secret)),
        ]
    else:
        steps = [draw(payloads(mechanism))]
    if draw(st.booleans()):
        steps[-1:] = [(b"*", ("cancel",))]
    if steps[0][1] != ("cancel",) and draw(st.booleans()):  # the first step as initial response
        head, meaning = steps.pop(0)
        text = f"{keyword} {mechanism.lower()} ".encode() + head
        auth = Line(text, ("cmd", "AUTH", mechanism, meaning))
    else:
        auth = Line(f"{keyword} {mechanism}".encode(), ("cmd", "AUTH", mechanism, None))
    return [auth, *(Line(text, ("sasl", *meaning)) for text, meaning in steps)]


def no_sasl_start(line: bytes) -> bool:
    parsed = [c.parse_command(line), c.parse_command(line.removesuffix(b"\r"))]
    return not any(isinstance(p, c.Auth) and p.mechanism is not None for p in parsed)


GARBAGE = (
    st.binary(max_size=60)
    | st.text(string.printable, max_size=40).map(str.encode)
    | st.tuples(st.sampled_from(KEYWORDS), st.binary(max_size=16)).map(b" ".join)
    | st.integers(1010, 1030).map(lambda n: b"NOOP " + b"A" * n)
).map(lambda raw: raw.replace(b"\n", b""))
GARBAGE_LINE = st.builds(Line, GARBAGE.filter(no_sasl_start), st.just(("raw",)), ENDINGS)


@st.composite
def transaction(draw: st.DrawFn) -> list[Line]:
    """A TRANSACTION command, DELE most often."""
    verb = draw(st.sampled_from(["DELE", "DELE", "DELE", "RETR", "TOP", "LIST", "UIDL", "RSET"]))
    number = draw(st.integers(1, 6))
    args: list[object] = [number, 3] if verb == "TOP" else [] if verb == "RSET" else [number]
    text = " ".join([verb, *(str(a) for a in args)]).encode()
    return [Line(text, ("cmd", verb, *args))]


CUTS = st.lists(st.integers(0, 3000), max_size=4)
COMMAND = st.one_of(
    login(), simple(), simple(), simple(), password(), sasl(), GARBAGE_LINE.map(lambda x: [x])
)


class Pop3Machine(RuleBasedStateMachine):
    """One maildrop (alice), one connection at a time, against the model."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.backend = MemoryBackend()
        self.store = self.backend.user("alice", "secret")
        self.services = quick_services(self.backend)
        self.model = Model([])
        self.session, self.out = make_session(self.backend, services=self.services)

    @initialize(messages=st.lists(MESSAGE, max_size=5), chunk=st.integers(1, 40))
    def mailbox(self, messages: list[bytes], chunk: int) -> None:
        self.store.token, self.store.chunk_size = "tok", chunk
        for data in messages:
            self.model.upstream.append(Stored(self.store.add(data), data))

    def plan(self, commands: list[list[Line]]) -> tuple[bytes, list[bytes]]:
        """The bytes to send and the exact replies expected, command by command."""
        wire, expected = b"", []
        for lines in commands:
            for line in lines:
                wire += line.text + line.ending
                expected += self.model.feed(line)
            if self.model.sasl and self.model.sasl[0] == "REFUSAL":  # the RFC 7628 dummy reply
                wire += b"AQ==\r\n"
                expected += self.model.feed(Line(b"AQ==", ("sasl", "any")))
            assert self.model.sasl is None, "the generator left a SASL exchange open"
        return wire, expected

    async def deliver(self, wire: bytes, cuts: list[int]) -> tuple[bytes, bool]:
        """Feed `wire` in pieces; the server's bytes, and whether it closed the connection."""
        points = [0, *sorted({min(cut, len(wire)) for cut in cuts}), len(wire)]
        received = b""
        for start, end in itertools.pairwise(points):
            data, closed = await exchange(self.session, self.out, wire[start:end])
            received += data
            if closed:
                await self.session.abort()  # as the server does after the last reply
                return received, True
        return received, False

    def converse(self, commands: list[list[Line]], cuts: list[int]) -> None:
        """Send `commands` in one pipelined feed (reconnecting first if closed) and compare."""
        if self.model.state == "C":
            self.session, self.out = make_session(self.backend, services=self.services)
            self.model.reconnect()
        try:
            wire, expected = self.plan(commands)
        except KnownBug:
            assume(False)  # a bug proven by a failing test in test_bugs.py
        received, closed = self.loop.run_until_complete(self.deliver(wire, cuts))
        event(f"state after a feed: {self.model.state}")
        event(f"QUITs that removed messages: {min(len(self.model.mutations), 3)}+")
        assert received.split(CRLF) == [*expected, b""] if expected else received == b""
        assert closed == (self.model.state == "C")

    @rule(commands=st.lists(COMMAND, min_size=1, max_size=6), cuts=CUTS)
    def send(self, commands: list[list[Line]], cuts: list[int]) -> None:
        self.converse(commands, cuts)

    @rule(
        first=login(),
        work=st.lists(transaction(), max_size=6),
        quit=st.booleans(),
        cuts=CUTS,
    )
    def typical_client(
        self, first: list[Line], work: list[list[Line]], quit: bool, cuts: list[int]
    ) -> None:
        """A plausible client: log in, list, retrieve, delete, maybe QUIT."""
        ending = [[Line(b"QUIT", ("cmd", "QUIT"))]] if quit else []
        self.converse([first, *work, *ending], cuts)

    @rule()
    def drop(self) -> None:
        """The client vanishes: no UPDATE, whatever was DELE'd."""
        if self.model.state != "C":
            self.session.engine.connection_closed()
            self.loop.run_until_complete(self.session.abort())
            self.model.state = "C"

    @rule(data=MESSAGE)
    def new_mail(self, data: bytes) -> None:
        self.model.upstream.append(Stored(self.store.add(data), data))

    @rule(pick=st.integers(0, 100))
    def expunged_by_another_client(self, pick: int) -> None:
        """A message of the snapshot vanishes upstream mid-session (conformance P-3.10)."""
        if self.model.state == "T" and self.model.upstream:
            gone = self.model.upstream.pop(pick % len(self.model.upstream))
            self.store.messages = [m for m in self.store.messages if m.identity != gone.identity]

    @rule()
    def second_session_is_refused(self) -> None:
        """RFC 1939 section 4 / RFC 2449 section 8.1.2: [IN-USE], and the holder is unharmed."""
        if self.model.state != "T":
            return
        session, out = make_session(self.backend, services=self.services)
        failures, self.model.locked_elsewhere = self.model.failures, True
        expected = [b"+OK send PASS", self.model.login("alice", "secret")]
        self.model.failures, self.model.locked_elsewhere = failures, False
        received, _ = self.loop.run_until_complete(
            exchange(session, out, b"USER alice\r\nPASS secret\r\n")
        )
        self.loop.run_until_complete(session.abort())
        assert received.split(CRLF) == [*expected, b""]

    @invariant()
    def upstream_is_what_the_model_says(self) -> None:
        assert [m.identity for m in self.store.messages] == [
            m.identity for m in self.model.upstream
        ]
        assert self.store.mutations == self.model.mutations
        assert self.services.locks.held == ({"alice"} if self.model.state == "T" else set())  # type: ignore[attr-defined]

    def teardown(self) -> None:
        self.loop.run_until_complete(self.session.abort())
        self.loop.close()


TestPop3Session = Pop3Machine.TestCase
TestPop3Session.settings = settings(
    max_examples=200,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
