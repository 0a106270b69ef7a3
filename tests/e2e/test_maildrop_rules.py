"""The never-lose-mail rules, checked through the bridge against a real Dovecot.

Every test drives a real POP3 conversation over a socket (poplib or raw bytes) into an
in-process bridge whose IMAP backend talks to the Dovecot fixture, then looks at the
mailbox with an independent IMAP client.
"""

from __future__ import annotations

import asyncio
import poplib
import re
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import pytest

from devkit.dovecot import Dovecot
from popbridge.config import MaildropConfig
from popbridge.contract import Disposition, DispositionKind
from popbridge.frontend.server import Pop3Server
from tests.conftest import StartBridge

P = ParamSpec("P")
T = TypeVar("T")

pytestmark = pytest.mark.dovecot


def pop(server: Pop3Server, user: str = "alice", password: str = "secret") -> poplib.POP3:
    client = poplib.POP3(*server.addresses[0], timeout=20)
    client.user(user)
    client.pass_(password)
    return client


async def in_thread(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return await asyncio.to_thread(function, *args, **kwargs)


@pytest.fixture
def seeded(mailbox: Dovecot) -> list[bytes]:
    return mailbox.seed_generated("alice", 5, 2000)


def retrieve_all(server: Pop3Server) -> tuple[list[int], list[bytes], list[bytes]]:
    client = pop(server)
    sizes = [int(line.split()[1]) for line in client.list()[1]]
    bodies = [b"\r\n".join(client.retr(n)[1]) + b"\r\n" for n in range(1, len(sizes) + 1)]
    uidls = [line.split()[1] for line in client.uidl()[1]]
    client.quit()
    return sizes, bodies, uidls


async def test_list_sizes_equal_retr_octets_and_bytes_match(
    bridge: StartBridge, mailbox: Dovecot, seeded: list[bytes]
) -> None:
    server = await bridge()
    sizes, bodies, uidls = await in_thread(retrieve_all, server)
    assert bodies == seeded
    assert sizes == [len(body) for body in seeded]
    assert all(re.fullmatch(rb"[\x21-\x7e]{1,70}", uidl) for uidl in uidls)
    assert len(set(uidls)) == len(uidls)


async def test_uidls_are_identical_across_sessions_and_bridges(
    bridge: StartBridge, seeded: list[bytes]
) -> None:
    first = (await in_thread(retrieve_all, await bridge()))[2]
    again = (await in_thread(retrieve_all, await bridge()))[2]  # a new bridge: nothing in memory
    assert first == again


async def test_dropped_connection_deletes_nothing(
    bridge: StartBridge, mailbox: Dovecot, seeded: list[bytes]
) -> None:
    server = await bridge()
    before = mailbox.uids("alice")
    reader, writer = await asyncio.open_connection(*server.addresses[0])
    writer.write(b"USER alice\r\nPASS secret\r\nDELE 1\r\nDELE 2\r\nQUIT")  # QUIT never completed
    for _ in range(5):
        await reader.readline()
    writer.close()
    await asyncio.sleep(0.3)
    assert mailbox.uids("alice") == before


async def test_rset_undoes_deletions(
    bridge: StartBridge, mailbox: Dovecot, seeded: list[bytes]
) -> None:
    server = await bridge()
    before = mailbox.uids("alice")

    def session() -> None:
        client = pop(server)
        client.dele(1)
        client.dele(3)
        client.rset()
        client.quit()

    await in_thread(session)
    assert mailbox.uids("alice") == before


async def test_quit_expunges_only_deleted_and_spares_other_clients_deleted_mail(
    bridge: StartBridge, mailbox: Dovecot, seeded: list[bytes]
) -> None:
    server = await bridge()
    imap = mailbox.imap("alice")
    imap.select("INBOX")
    imap.uid("STORE", "4", "+FLAGS.SILENT", "(\\Deleted)")  # another client's pending deletion
    imap.logout()

    def session() -> int:
        client = pop(server)
        count = client.stat()[0]
        client.dele(1)
        client.quit()
        return count

    assert await in_thread(session) == 4  # the \Deleted message is not offered
    after = mailbox.uids("alice")
    assert sorted(after) == [2, 3, 4, 5]
    assert "\\Deleted" in after[4]


async def test_retr_and_top_leave_seen_unset(
    bridge: StartBridge, mailbox: Dovecot, seeded: list[bytes]
) -> None:
    server = await bridge()

    def session() -> None:
        client = pop(server)
        for n in range(1, 6):
            client.retr(n)
            client.top(n, 2)
        client.quit()

    await in_thread(session)
    assert all("\\Seen" not in flags for flags in mailbox.uids("alice").values())


async def test_mark_seen_on_retr_when_configured(
    bridge: StartBridge, mailbox: Dovecot, seeded: list[bytes]
) -> None:
    server = await bridge(maildrop=MaildropConfig(mark_seen_on_retr=True))

    def session() -> None:
        client = pop(server)
        client.retr(1)
        client.retr(2)  # answered ahead of time, after RETR 1
        client.top(4, 0)  # 3 was prepared after RETR 2 but never asked for
        client.quit()

    await in_thread(session)
    seen = sorted(uid for uid, flags in mailbox.uids("alice").items() if "\\Seen" in flags)
    assert seen == [1, 2]


@pytest.mark.parametrize(
    ("disposition", "folder"),
    [
        (Disposition(DispositionKind.TRASH), "Trash"),
        (Disposition(DispositionKind.MOVE, folder="Archive"), "Archive"),
    ],
)
async def test_move_dispositions(
    bridge: StartBridge,
    mailbox: Dovecot,
    seeded: list[bytes],
    disposition: Disposition,
    folder: str,
) -> None:
    server = await bridge(maildrop=MaildropConfig(disposition=disposition))
    before_target = len(mailbox.uids("alice", folder))

    def session() -> None:
        client = pop(server)
        client.dele(2)
        client.quit()

    await in_thread(session)
    assert sorted(mailbox.uids("alice")) == [1, 3, 4, 5]
    assert len(mailbox.uids("alice", folder)) == before_target + 1


async def test_seen_and_keyword_dispositions(
    bridge: StartBridge, mailbox: Dovecot, seeded: list[bytes]
) -> None:
    seen_bridge = await bridge(
        maildrop=MaildropConfig(disposition=Disposition(DispositionKind.SEEN))
    )
    keyword = Disposition(DispositionKind.KEYWORD, keyword="$POP3Deleted")
    keyword_bridge = await bridge(maildrop=MaildropConfig(disposition=keyword))

    def delete(server: Pop3Server, number: int) -> None:
        client = pop(server)
        client.dele(number)
        client.quit()

    await in_thread(delete, seen_bridge, 1)
    await in_thread(delete, keyword_bridge, 2)
    flags = mailbox.uids("alice")
    assert sorted(flags) == [1, 2, 3, 4, 5]
    assert "\\Seen" in flags[1] and "$POP3Deleted" in flags[2]
    uidls = (await in_thread(retrieve_all, keyword_bridge))[2]
    assert len(uidls) == 4  # the keyword hides message 2 from POP3 from now on


async def test_second_session_is_in_use_only_with_the_right_password(
    bridge: StartBridge, seeded: list[bytes]
) -> None:
    server = await bridge()
    first = await in_thread(pop, server)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        await in_thread(pop, server, "alice", "wrong")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        await in_thread(pop, server, "ALICE", "secret")
    await in_thread(first.quit)
    second = await in_thread(pop, server)
    await in_thread(second.quit)


async def test_shutdown_applies_no_pending_deletion(
    bridge: StartBridge, mailbox: Dovecot, seeded: list[bytes]
) -> None:
    server = await bridge()
    before = mailbox.uids("alice")
    reader, writer = await asyncio.open_connection(*server.addresses[0])
    writer.write(b"USER alice\r\nPASS secret\r\nDELE 1\r\n")
    for _ in range(4):
        await reader.readline()
    await server.stop()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert mailbox.uids("alice") == before


async def test_large_mailbox_lists_correctly(bridge: StartBridge, mailbox: Dovecot) -> None:
    expected = mailbox.seed_generated("alice", 3000, 300)
    server = await bridge()

    def session() -> tuple[tuple[int, int], list[bytes], list[bytes], bytes]:
        client = pop(server)
        stat = client.stat()
        listing = client.list()[1]
        uidls = client.uidl()[1]
        last = b"\r\n".join(client.retr(3000)[1]) + b"\r\n"
        client.quit()
        return stat, listing, uidls, last

    stat, listing, uidls, last = await in_thread(session)
    assert stat == (3000, sum(len(m) for m in expected))
    assert listing == [b"%d %d" % (n, len(m)) for n, m in enumerate(expected, 1)]
    assert len({line.split()[1] for line in uidls}) == 3000
    assert last == expected[-1]


async def test_wrong_password_and_unreachable_upstream_are_told_apart(
    bridge: StartBridge, seeded: list[bytes]
) -> None:
    good = await bridge()
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\]"):
        await in_thread(pop, good, "alice", "not-it")
    from devkit.dovecot import free_port

    down = await bridge(port=free_port())
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[SYS/TEMP\]"):
        await in_thread(pop, down)


async def test_unterminated_last_line_gets_crlf_and_an_exact_size_from_the_start(
    bridge: StartBridge, mailbox: Dovecot
) -> None:
    mailbox.seed("alice", [b"Subject: no newline\n\nlast line without newline", b"S: 2\n\nok\n"])
    server = await bridge()
    first_sizes, bodies, _ = await in_thread(retrieve_all, server)
    assert bodies[0] == b"Subject: no newline\r\n\r\nlast line without newline\r\n"
    # the first session already counts the CRLF RFC822.SIZE leaves out (RFC 1939 section 11)
    assert first_sizes == [len(body) for body in bodies]
    assert (await in_thread(retrieve_all, server))[0] == first_sizes
