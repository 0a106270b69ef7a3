"""The JMAP backend against a real Cyrus (HTTP and HTTPS), plus JMAP-only behaviour.

This module owns the JMAP harness for the contract suite (`tests.backends.contract`), run
against Cyrus' JMAP over plain HTTP and over verified HTTPS, and the tests only a JMAP
upstream has against the real server: paging with a small page, the bridge's own order for
equal receivedAt, the configured Mailbox, the TLS checks, the delayed-ACK fix, and what
reading leaves upstream. What Cyrus will not do on demand (long ids, 429, clamped limits,
per-item errors, silence) is tested against `devkit.fake_jmap` at the end.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from backends.jmap import JmapBackend, create
from backends.jmap import sockets as jmap_sockets
from backends.jmap.discovery import expand
from backends.jmap.dispose import pointer
from devkit import fake_jmap
from devkit.cyrus import Cyrus, start_cyrus
from devkit.dovecot import free_port
from devkit.fake_jmap import FakeEmail, FakeJmap
from devkit.tlsca import make_test_pki
from popbridge.config import parse_config
from popbridge.contract import (
    Backend,
    Credentials,
    Disposition,
    DispositionKind,
    load_backend,
    withheld_by,
)
from popbridge.errors import (
    AuthFailed,
    BackendFailure,
    BackendUnavailable,
    ConfigError,
    MessageGone,
)
from popbridge.store.uidl import is_valid_uidl, uidl_for
from tests.backends.contract import BackendContract, Stored, Where, by_subject, message, read_all

USERS = {"carol": "c4rol pw", "dave": "d4ve pw"}
FOLDERS: dict[Where, str] = {"maildrop": "INBOX", "trash": "Trash", "move": "Archive"}
CHUNK = 256 * 1024


@pytest.fixture(scope="module")
def cyrus() -> Iterator[Cyrus]:
    server = start_cyrus(dict(USERS))
    yield server
    server.stop()


class JmapHarness:
    """The contract harness for Cyrus: seeds by IMAP MULTIAPPEND, reads state back over IMAP."""

    fetch_chunk = CHUNK
    move_folder = "Archive"

    def __init__(self, cyrus: Cyrus, user: str, scheme: str) -> None:
        self.cyrus = cyrus
        self.user = user
        self.scheme = scheme
        self.credentials = Credentials(user, cyrus.users[user])

    def settings(self, **overrides: Any) -> dict[str, Any]:
        url = self.cyrus.https_url if self.scheme == "https" else self.cyrus.http_url
        table: dict[str, Any] = {"type": "jmap", "url": url, "timeout": 10, "fetch_chunk": CHUNK}
        if self.scheme == "https":
            table["ca_file"] = str(self.cyrus.pki.ca_file)
        merged = table | overrides
        return {key: value for key, value in merged.items() if value is not None}

    def backend(self, **overrides: Any) -> Backend:
        return create(self.settings(**overrides), source="test.toml")

    def unreachable(self) -> Backend:
        return self.backend(url=f"{self.scheme}://127.0.0.1:{free_port()}", connect_timeout=2)

    def seed(self, messages: Sequence[bytes]) -> None:
        self.cyrus.seed(self.user, messages)

    def seed_generated(self, count: int, size: int) -> list[bytes]:
        return self.cyrus.seed_generated(self.user, count, size)

    def stored(self, where: Where = "maildrop") -> list[Stored]:
        return [
            Stored(
                subject=m.subject,
                seen="\\Seen" in m.flags,
                deleted="\\Deleted" in m.flags,
                keywords=frozenset(f for f in m.flags if not f.startswith("\\")),
            )
            for m in self.cyrus.stored(self.user, FOLDERS[where])
        ]


@pytest.fixture(params=["http", "https"])
def harness(cyrus: Cyrus, request: pytest.FixtureRequest) -> JmapHarness:
    cyrus.reset_mailbox("carol")
    return JmapHarness(cyrus, "carol", request.param)


@pytest.fixture
def plain(cyrus: Cyrus) -> JmapHarness:
    """The harness over plain HTTP only, for tests where the transport does not matter."""
    cyrus.reset_mailbox("dave")
    return JmapHarness(cyrus, "dave", "http")


class TestJmapContract(BackendContract):
    """The contract suite on Cyrus' JMAP, over HTTP and HTTPS."""


async def subjects(backend: Backend, credentials: Credentials, **options: Any) -> list[str]:
    mailbox = await backend.open(credentials)
    try:
        return list(await by_subject(mailbox, **options))
    finally:
        await mailbox.close()


# ------------------------------------------------------------ listing order


async def test_small_pages_list_everything_in_order(plain: JmapHarness) -> None:
    plain.seed([message(f"p{n:02}") for n in range(20)])
    listed = await subjects(plain.backend(page_size=3), plain.credentials)
    assert listed == [f"p{n:02}" for n in range(20)]


async def test_equal_received_at_gets_one_stable_order(plain: JmapHarness) -> None:
    plain.cyrus.seed("dave", [message(f"tie {n}") for n in range(12)], same_second=True)
    orders = []
    for page_size in (5, 1024, 5):
        mailbox = await plain.backend(page_size=page_size).open(plain.credentials)
        try:
            orders.append([m.identity for m in await mailbox.list()])
        finally:
            await mailbox.close()
    assert len(orders[0]) == 12
    assert orders[0] == orders[1] == orders[2]
    assert orders[0] == sorted(orders[0])  # equal receivedAt: ordered by Email id


# --------------------------------------------------------- configuration


async def test_session_url_and_a_named_mailbox(plain: JmapHarness) -> None:
    plain.cyrus.seed("dave", [message("archived")], folder="Archive")
    plain.seed([message("in the inbox")])
    session_url = plain.cyrus.http_url + "/jmap"
    backend = plain.backend(url=None, session_url=session_url, mailbox="Archive")
    assert await subjects(backend, plain.credentials) == ["archived"]
    assert await subjects(plain.backend(mailbox="INBOX"), plain.credentials) == ["in the inbox"]


async def test_missing_mailbox_is_backend_failure(plain: JmapHarness) -> None:
    with pytest.raises(BackendFailure):
        await plain.backend(mailbox="No Such Mailbox").open(plain.credentials)


async def test_untrusted_certificate_is_backend_failure(cyrus: Cyrus, tmp_path: Path) -> None:
    other_ca = str(make_test_pki(tmp_path / "other").ca_file)
    harness = JmapHarness(cyrus, "dave", "https")
    backend = harness.backend(ca_file=other_ca)
    with pytest.raises(BackendFailure):
        await backend.open(harness.credentials)
    with pytest.raises(BackendFailure):
        await backend.check()


async def test_check_reports_tls_and_the_auth_challenge(cyrus: Cyrus) -> None:
    findings = await JmapHarness(cyrus, "dave", "https").backend().check()
    assert any(line.startswith("TLS verified: TLSv1.") for line in findings)
    assert any("HTTP 401" in line for line in findings)
    findings = await JmapHarness(cyrus, "dave", "http").backend().check()
    assert "TLS: none (cleartext http)" in findings


@pytest.mark.parametrize(
    "credentials",
    [
        Credentials("dave:x", "d4ve pw"),
        Credentials("dave\r\nX-Injected: 1", "d4ve pw"),
        Credentials("dave", "d4ve pw\r\nX-Injected: 1"),
        Credentials("", "d4ve pw"),
        Credentials("dave", "not a token", mechanism="oauth2"),
        Credentials("dave", "d4ve pw", mechanism="apop"),
    ],
)
async def test_unsendable_credentials_are_auth_failed(
    plain: JmapHarness, credentials: Credentials
) -> None:
    with pytest.raises(AuthFailed):
        await plain.backend().open(credentials)


# ---------------------------------------------------------------- reading


async def test_downloads_rearm_quickack_on_every_read(
    plain: JmapHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cyrus' httpd writes 4 KiB pieces with Nagle on; without an immediate ACK per read each
    download waits for the delayed ACK (see `backends.jmap.sockets`)."""
    plain.seed_generated(20, 20_000)
    rearmed = []
    original = jmap_sockets.QuickAckSocket._rearm

    def counting(sock: jmap_sockets.QuickAckSocket) -> None:
        rearmed.append(sock.fileno())
        original(sock)

    monkeypatch.setattr(jmap_sockets.QuickAckSocket, "_rearm", counting)
    mailbox = await plain.backend().open(plain.credentials)
    try:
        listed = await mailbox.list()
        before = len(rearmed)
        for entry in listed:
            assert len(b"".join(await read_all(mailbox, entry.identity))) == entry.size
    finally:
        await mailbox.close()
    assert len(rearmed) - before >= len(listed) * 2  # several reads per 20 KB download


async def test_a_message_moved_away_is_gone(plain: JmapHarness) -> None:
    plain.seed([message("moves"), message("stays")])
    reader = await plain.backend().open(plain.credentials)
    try:
        listed = await by_subject(reader)
        mover = await plain.backend().open(plain.credentials)
        how = Disposition(DispositionKind.MOVE, folder="Archive")
        assert (await mover.dispose([listed["moves"].identity], how)).ok
        await mover.close()
        with pytest.raises(MessageGone):
            await read_all(reader, listed["moves"].identity)
        assert await read_all(reader, listed["stays"].identity)
    finally:
        await reader.close()


async def test_top_reads_a_prefix_and_keeps_the_pool_usable(plain: JmapHarness) -> None:
    (wire,) = plain.seed_generated(1, 2_000_000)
    mailbox = await plain.backend().open(plain.credentials)
    try:
        (entry,) = await mailbox.list()
        for _ in range(3):  # each early stop drops its connection; the next gets a fresh one
            top = b"".join(await read_all(mailbox, entry.identity, body_lines=2))
            assert wire.startswith(top)
            assert len(top) < 200_000
        assert b"".join(await read_all(mailbox, entry.identity)) == wire
    finally:
        await mailbox.close()


# ----------------------------------------------------------- dispositions


async def test_keyword_is_sent_in_lower_case_and_hides(plain: JmapHarness) -> None:
    plain.seed([message("tagged"), message("plain")])
    mailbox = await plain.backend().open(plain.credentials)
    try:
        listed = await by_subject(mailbox)
        how = Disposition(DispositionKind.KEYWORD, keyword="$POP3Deleted")
        assert (await mailbox.dispose([listed["tagged"].identity], how)).ok
    finally:
        await mailbox.close()
    stored = {m.subject: m for m in plain.stored()}
    assert {k.lower() for k in stored["tagged"].keywords} == {"$pop3deleted"}
    assert stored["plain"].keywords == frozenset()
    listed_now = await subjects(plain.backend(), plain.credentials, hidden="$POP3Deleted")
    assert listed_now == ["plain"]


async def test_invalid_keyword_and_missing_folder_touch_nothing(plain: JmapHarness) -> None:
    plain.seed([message("untouched")])
    mailbox = await plain.backend().open(plain.credentials)
    try:
        (entry,) = await mailbox.list()
        for how in (
            Disposition(DispositionKind.KEYWORD, keyword="bad keyword"),
            # would need JSON Pointer escapes in the patch, which Cyrus 3.6 stores verbatim
            Disposition(DispositionKind.KEYWORD, keyword="done/by~us"),
            Disposition(DispositionKind.MOVE, folder="Nowhere"),
            Disposition(DispositionKind.MOVE, folder="INBOX"),
        ):
            result = await mailbox.dispose([entry.identity], how)
            assert result.failed == frozenset([entry.identity]), how
        with pytest.raises(BackendFailure):
            await mailbox.list(hidden_keyword="bad keyword")
    finally:
        await mailbox.close()
    assert plain.stored() == [Stored("untouched", False, False, frozenset())]


async def test_mailbox_closed_twice_and_backend_reusable(plain: JmapHarness) -> None:
    plain.seed([message("one")])
    backend = plain.backend()
    first = await backend.open(plain.credentials)
    await first.close()
    await first.close()
    assert await subjects(backend, plain.credentials) == ["one"]


# ------------------------------------------------------- the scripted fake


def fake_email(email_id: str, subject: str, received: str = "2024-01-01T00:00:00Z") -> FakeEmail:
    return FakeEmail(email_id, message(subject), received)


def fake_backend(fake: FakeJmap, **overrides: Any) -> Backend:
    table = {"type": "jmap", "url": fake.url, "timeout": 5, "max_retry_after": 1}
    return create(table | overrides, source="test.toml")


FAKE_USER = Credentials(fake_jmap.USER, fake_jmap.PASSWORD)
LONG_IDS = ["a", "-" + "x" * 68, "_" + "y" * 69, "z" * 71, "L" * 255, "L" * 254 + "l"]


async def test_long_ids_become_valid_stable_uidls() -> None:
    emails = [
        fake_email(i, f"id {len(i)}{i[-1]}", f"2024-01-01T00:00:0{n}Z")
        for n, i in enumerate(LONG_IDS)
    ]
    async with FakeJmap(emails) as fake:
        uidls = []
        for _ in range(2):
            mailbox = await fake_backend(fake).open(FAKE_USER)
            try:
                listed = await mailbox.list()
                assert [m.identity for m in listed] == LONG_IDS
                uidls.append([uidl_for(m.identity) for m in listed])
                data = b"".join(await read_all(mailbox, LONG_IDS[4]))
                assert data == emails[4].blob
            finally:
                await mailbox.close()
        assert uidls[0] == uidls[1]
        assert len(set(uidls[0])) == len(LONG_IDS)
        assert all(is_valid_uidl(u) for u in uidls[0])
        assert uidls[0][:3] == LONG_IDS[:3]  # up to 70 characters: the id itself


async def test_paging_respects_max_objects_in_get_and_clamped_limits() -> None:
    emails = [fake_email(f"e{n:02}", f"m{n:02}", f"2024-01-01T00:{n:02}:00Z") for n in range(20)]
    async with FakeJmap(emails, maxObjectsInGet=7) as fake:
        fake.clamp = 5
        assert await subjects(fake_backend(fake), FAKE_USER) == [f"m{n:02}" for n in range(20)]
        assert all(a["limit"] <= 7 for a in fake.methods("Email/query"))
        assert len(fake.methods("Email/query")) >= 4  # 20 ids, at most 5 per page


async def test_query_state_change_restarts_the_listing() -> None:
    emails = [fake_email(f"e{n:02}", f"m{n:02}", f"2024-01-01T00:{n:02}:00Z") for n in range(9)]
    async with FakeJmap(emails) as fake:
        fake.move_state_after = 1  # the state moves right after the first page
        mailbox = await fake_backend(fake, page_size=4).open(FAKE_USER)
        try:
            assert [m.identity for m in await mailbox.list()] == [e.id for e in emails]
        finally:
            await mailbox.close()
        pages = [(a["position"], a["limit"]) for a in fake.methods("Email/query")]
        assert pages == [(0, 4), (4, 4), (0, 9)]  # then again, everything in one page


@pytest.mark.parametrize("sorts_by_id", [True, False])
async def test_ties_are_ordered_by_id_whatever_the_server_says(sorts_by_id: bool) -> None:
    """Without an id sort, this server's pages disagree (ties reshuffled per query): the
    listing notices the ids do not add up and asks again for everything in one page."""
    ids = [f"t{n}" for n in range(10)]
    async with FakeJmap([fake_email(i, i) for i in reversed(ids)]) as fake:
        fake.sorts_by_id = sorts_by_id
        for _ in range(3):
            mailbox = await fake_backend(fake, page_size=3).open(FAKE_USER)
            try:
                assert [m.identity for m in await mailbox.list()] == sorted(ids)
            finally:
                await mailbox.close()
        sorts = [len(a["sort"]) for a in fake.methods("Email/query")]
        assert set(sorts) == ({2} if sorts_by_id else {1})


@pytest.mark.parametrize(
    ("script", "outcome"),
    [
        ([(429, {"Retry-After": "0"}), (503, {"Retry-After": "0"})], None),
        ([(429, {"Retry-After": "Mon, 01 Jan 2024 00:00:00 GMT"})], None),  # in the past
        ([(429, {"Retry-After": "60"})], BackendUnavailable),
        ([(503, {})], BackendUnavailable),
        ([(429, {"Retry-After": "0"})] * 6, BackendUnavailable),
        ([(401, {})], AuthFailed),
        ([(403, {})], BackendFailure),
        ([(500, {})], BackendUnavailable),
    ],
)
async def test_http_statuses(script: list[tuple[int, dict[str, str]]], outcome: Any) -> None:
    async with FakeJmap([fake_email("e1", "one")]) as fake:
        mailbox = await fake_backend(fake).open(FAKE_USER)
        try:
            fake.statuses = list(script)
            if outcome is None:
                assert [m.identity for m in await mailbox.list()] == ["e1"]
            else:
                with pytest.raises(outcome):
                    await mailbox.list()
        finally:
            await mailbox.close()


async def test_login_failures_and_bearer_tokens() -> None:
    async with FakeJmap([fake_email("e1", "one")]) as fake:
        with pytest.raises(AuthFailed):
            await fake_backend(fake).open(Credentials(fake_jmap.USER, "wrong"))
        token = Credentials(fake_jmap.USER, fake_jmap.TOKEN, mechanism="oauth2")
        assert await subjects(fake_backend(fake), token) == ["one"]
        fake.method_errors["Mailbox/get"] = "accountNotFound"
        with pytest.raises(BackendFailure):
            await fake_backend(fake).open(FAKE_USER)
        del fake.method_errors["Mailbox/get"]
        fake.refuse.add(fake_jmap.MAIL)
        with pytest.raises(BackendFailure):  # unknownCapability
            await fake_backend(fake).open(FAKE_USER)
        fake.capabilities.pop(fake_jmap.MAIL)
        with pytest.raises(BackendFailure):  # no mail capability in the Session
            await fake_backend(fake).open(FAKE_USER)


async def test_a_silent_server_is_unavailable() -> None:
    async with FakeJmap([fake_email("e1", "one")]) as fake:
        fake.stall = True
        with pytest.raises(BackendUnavailable):
            await fake_backend(fake, timeout=0.3).open(FAKE_USER)


@pytest.mark.parametrize("kind", [DispositionKind.EXPUNGE, DispositionKind.TRASH])
async def test_per_item_errors_fail_only_those_ids(kind: DispositionKind) -> None:
    emails = [fake_email(f"e{n}", f"m{n}") for n in range(10)]
    async with FakeJmap(emails, maxObjectsInSet=4) as fake:
        fake.set_errors = {"e3": "forbidden", "e7": "notFound"}
        mailbox = await fake_backend(fake).open(FAKE_USER)
        try:
            identities = [m.identity for m in await mailbox.list()] + ["gone-already"]
            result = await mailbox.dispose(identities, Disposition(kind))
        finally:
            await mailbox.close()
        assert result.failed == frozenset({"e3"})  # notFound: already gone, counts as done
        sets = fake.methods("Email/set")
        assert len(sets) == 3
        assert all(len(s.get("destroy", s.get("update", []))) <= 4 for s in sets)
        left = {i for i, e in fake.emails.items() if e.mailboxes.get(fake_jmap.INBOX)}
        assert left == {"e3", "e7"}


async def test_a_blob_the_server_no_longer_has_is_gone() -> None:
    async with FakeJmap([fake_email("e1", "one")]) as fake:
        mailbox = await fake_backend(fake).open(FAKE_USER)
        try:
            (entry,) = await mailbox.list()
            fake.emails["e1"].id = "renamed"  # Email/get still finds it, the blob id moved
            with pytest.raises(MessageGone):
                await read_all(mailbox, entry.identity)
            with pytest.raises(MessageGone):
                await read_all(mailbox, "x" * 256)
        finally:
            await mailbox.close()


async def test_reading_in_order_locates_many_emails_per_request() -> None:
    emails = [fake_email(f"e{n:02}", f"m{n:02}", f"2024-01-01T00:{n:02}:00Z") for n in range(9)]
    async with FakeJmap(emails, maxObjectsInGet=4) as fake:
        mailbox = await fake_backend(fake).open(FAKE_USER)
        try:
            listed = [m.identity for m in await mailbox.list()]
            before = len(fake.methods("Email/get"))
            fake.emails["e02"].mailboxes = {}  # moved away after the listing, before any read
            for identity in listed[:2]:
                assert b"".join(await read_all(mailbox, identity)) == fake.emails[identity].blob
            with pytest.raises(MessageGone):
                await read_all(mailbox, "e02")  # not found by the first lookup: asked again
            for identity in listed[3:]:
                assert b"".join(await read_all(mailbox, identity)) == fake.emails[identity].blob
            lookups = fake.methods("Email/get")[before:]
        finally:
            await mailbox.close()
    # e00-e03; e02 (missing from that answer, so asked again) with the three after it; the rest
    assert [a["ids"] for a in lookups] == [
        ["e00", "e01", "e02", "e03"], ["e02", "e03", "e04", "e05"],
        ["e06", "e07", "e08"],
    ]  # fmt: skip


# ------------------------------------------------------------ configuration


def test_the_deploy_example_is_valid() -> None:
    example = Path(__file__).parents[2] / "deploy" / "popbridge.jmap.example.toml"
    config = parse_config(tomllib.loads(example.read_text()), source=str(example))
    backend = load_backend(config.backend_type, config.backend_settings, source=str(example))
    assert isinstance(backend, JmapBackend)
    assert backend.settings.session_url == "https://mail.example.net/.well-known/jmap"
    assert config.maildrop.disposition.kind is DispositionKind.TRASH


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "give exactly one of url and session_url"),
        ({"url": "https://a.example", "session_url": "https://a.example/s"}, "exactly one"),
        ({"url": "ftp://a.example"}, "http:// or https://"),
        ({"url": "https://u:p@a.example"}, "user name or password"),
        ({"url": "https://a.example/jmap"}, "origin only"),
        ({"url": "https://a.example:99999"}, "invalid port"),
        ({"session_url": "https://a.example/s p"}, "spaces"),
        ({"url": "https://a.example", "mailbox": "a\nb"}, "control characters"),
        ({"url": "https://a.example", "timeout": "5"}, "must be a number"),
        ({"url": "https://a.example", "max_measure_download": -1}, "download: must be at least 0"),
        ({"url": "https://a.example", "max_measure_download": "1"}, "must be an integer"),
        ({"url": "https://a.example", "folder": "INBOX"}, "unknown key"),
    ],
)
def test_bad_settings_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create({"type": "jmap", **table}, source="test.toml")


def test_uri_templates_and_patch_keys_are_escaped() -> None:
    template = "https://h/d/{accountId}/{blobId}/{name}?accept={type}&x={undefined}"
    values = {"accountId": "a/b c", "blobId": "G-1_~.", "name": "m.eml", "type": "message/rfc822"}
    assert expand(template, values) == (
        "https://h/d/a%2Fb%20c/G-1_~./m.eml?accept=message%2Frfc822&x="
    )
    with pytest.raises(BackendFailure):
        expand("https://h/{+blobId}", values)  # level 2 and up: refused, not guessed
    assert pointer("a/b~c") == "a~1b~0c"


async def test_a_listing_says_which_emails_the_keyword_withheld(plain: JmapHarness) -> None:
    # still in the Mailbox: the UID map must keep their UIDLs from a content-identical copy
    plain.seed([message("tagged"), message("plain")])
    mailbox = await plain.backend().open(plain.credentials)
    try:
        listed = await by_subject(mailbox)
        how = Disposition(DispositionKind.KEYWORD, keyword="$popbridge-done")
        assert (await mailbox.dispose([listed["tagged"].identity], how)).ok
        remaining = await mailbox.list(hidden_keyword="$popbridge-done")
    finally:
        await mailbox.close()
    assert [m.identity for m in remaining] == [listed["plain"].identity]
    assert withheld_by(mailbox) == {listed["tagged"].identity}
