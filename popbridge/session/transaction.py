"""The TRANSACTION state: the numbered snapshot, its listings, RETR/TOP, DELE and RSET.

`Transaction.enter` lists the mailbox once at login (RFC 1939 §4: the numbers never change
in a session) and assigns UIDLs; after that nothing here changes anything upstream: DELE
and RSET only mark the snapshot (RFC 1939 §6). RETR and TOP stream through `retrieval`,
with the next message prepared while the client reads in order (`lookahead`). The
transaction owns the opened mailbox and its lock until `close`, which closes the mailbox
exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from popbridge.contract import Mailbox, measurer_of, withheld_by
from popbridge.errors import BridgeError
from popbridge.pop3 import commands as c
from popbridge.pop3.engine import Pop3Engine
from popbridge.pop3.replies import Err, Ok, Reply
from popbridge.session.login import LOGOUT_DEADLINE, Held
from popbridge.session.lookahead import Lookahead
from popbridge.session.retrieval import Output, send_message
from popbridge.session.services import Services, SessionPolicy
from popbridge.session.snapshot import NoSuchMessage, Snapshot

Listing = c.Stat | c.List | c.Uidl | c.Dele | c.Noop | c.Rset


class Transaction:
    """One logged-in session's maildrop: snapshot, retrieval, and what RETR has sent."""

    def __init__(
        self, held: Held, snapshot: Snapshot, services: Services, *,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:  # fmt: skip
        self._held: Held | None = held
        self.account = held.account
        self.snapshot = snapshot
        self._services = services
        self._log = log
        self._lookahead = Lookahead(held.mailbox, log=log)
        self.retrieved: set[str] = set()  # identities RETR sent in full
        self._last_retr: int | None = None  # the number of the last message RETR sent

    @classmethod
    async def enter(
        cls, held: Held, services: Services, policy: SessionPolicy,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> Transaction:  # fmt: skip
        """List the maildrop and number it; raises and holds nothing if listing fails."""
        listing = await held.mailbox.list(
            hidden_keyword=policy.disposition.hides_keyword,
            memory=services.listings.for_account(held.account),
        )
        listing = await services.sizes.correct(held.account, listing)
        withheld = withheld_by(held.mailbox)
        uidls = await services.uidls.assign(held.account, listing, withheld=withheld)
        return cls(held, Snapshot(listing, uidls), services, log=log)

    @property
    def mailbox(self) -> Mailbox | None:
        """The opened mailbox, until `close`."""
        return None if self._held is None else self._held.mailbox

    async def answer(self, command: Listing) -> Reply:
        """STAT, LIST, UIDL, DELE, RSET and NOOP: the snapshot answers them, once the sizes
        STAT and LIST tell are exact."""
        snapshot = self.snapshot
        try:
            if isinstance(command, c.Stat | c.List):
                number = command.msg if isinstance(command, c.List) else None
                await self._measure(snapshot.provisional(number))
            match command:
                case c.Stat():
                    count, octets = snapshot.stat()
                    return Ok(f"{count} {octets}")
                case c.List(None):
                    lines = tuple(f"{e.number} {e.size}" for e in snapshot.live())
                    return Ok("scan listing follows", lines)
                case c.List(number) if number is not None:
                    return Ok(f"{number} {snapshot.get(number).size}")
                case c.Uidl(None):
                    lines = tuple(f"{e.number} {e.uidl}" for e in snapshot.live())
                    return Ok("unique-id listing follows", lines)
                case c.Uidl(number) if number is not None:
                    return Ok(f"{number} {snapshot.get(number).uidl}")
                case c.Dele(number):
                    snapshot.delete(number)
                    return Ok(f"message {number} deleted")
                case c.Rset():
                    snapshot.reset()
                    return Ok("deletion marks removed")
            return Ok()  # NOOP
        except NoSuchMessage as missing:
            return Err(str(missing))
        except BridgeError as error:  # measuring sizes failed: nothing is told inexactly
            self._log.warning("exact sizes not measured: %r", error)
            return Err(error.wire_text, error.code)

    async def _measure(self, identities: list[str]) -> None:
        """Ask the backend for the exact sizes of `identities`: RFC 1939 §5 LIST and STAT
        count the octets RETR sends. Measured once per message: the backend remembers."""
        mailbox = self.mailbox
        measurer = measurer_of(mailbox) if mailbox is not None and identities else None
        if measurer is None:
            return
        await self._lookahead.idle()  # the mailbox serves one call at a time
        self.snapshot.measured(await measurer.measure(identities))

    async def send(self, command: c.Retr | c.Top, engine: Pop3Engine, out: Output) -> None:
        """RETR or TOP: stream the message, then prepare the next if reading in order."""
        lines = command.lines if isinstance(command, c.Top) else None
        try:
            entry = self.snapshot.get(command.msg)
            # "+OK <octets>" (RFC 1939 §7) must agree with LIST; an answer prepared ahead
            # counted its octets already
            if lines is None and not entry.message.exact:
                prepared = await self._lookahead.idle()
                if prepared is None or prepared.identity != entry.message.identity:
                    await self._measure([entry.message.identity])
                    entry = self.snapshot.get(command.msg)
        except NoSuchMessage as missing:
            out.write(engine.send(Err(str(missing))))
            return
        except BridgeError as error:
            self._log.warning("exact size not measured: %r", error)
            out.write(engine.send(Err(error.wire_text, error.code)))
            return
        octets = await send_message(engine, out, self._lookahead, entry, lines, self._log)
        if octets is None or lines is not None:
            return
        self.retrieved.add(entry.message.identity)
        in_order = self._last_retr in (None, entry.number - 1)  # not a repeated or random RETR
        self._last_retr = entry.number
        with contextlib.suppress(NoSuchMessage):
            following = self.snapshot.get(entry.number + 1)
            # the client reads in order: prepare the next, unless its size is not even
            # estimated (0, not exact): it could be of any size, and QUIT waits for it
            if in_order and (following.message.exact or following.size > 0):
                self._lookahead.start(following.message.identity, following.size)
        if not entry.message.exact:
            self.snapshot.measured({entry.message.identity: octets})
        if octets != entry.size:
            # RFC 1939 §11: LIST must count what RETR sends; content is immutable per
            # identity (RFC 3501 §2.3.1.1), so later sessions list the size sent now.
            self._log.warning(
                "message %d: listed %d, sent %d octets", entry.number, entry.size, octets
            )
            await self._services.sizes.record(self.account, entry.message.identity, octets)

    async def settle(self) -> None:
        """Let a RETR answer in preparation finish: the mailbox serves one call at a time."""
        await self._lookahead.settle()

    async def close(self) -> None:
        """Release the lock and close the mailbox, once; later calls do nothing."""
        held, self._held = self._held, None
        if held is None:
            return
        try:
            await self.settle()
        finally:
            try:
                # our own deadline on the LOGOUT; the lock outlives it (see Session._quit)
                await asyncio.wait_for(held.mailbox.close(), LOGOUT_DEADLINE)
            finally:
                await held.lease.release()
