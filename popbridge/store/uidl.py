"""How backend identities become POP3 unique-ids (UIDLs).

RFC 1939 section 7 allows 1 to 70 characters in 0x21-0x7E, unique in the maildrop and
never reused. A backend identity that already fits (an IMAP `UIDVALIDITY.UID`) is used as
it is; any other (a JMAP id of 100 characters, a Graph id with "=") is replaced by "~" and
43 characters of base64url SHA-256, which no raw identity can collide with because raw
identities starting with "~" are always hashed too. The mapping is deterministic and needs
no state, so a UIDL is the same in every session and after a restart.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Collection, Sequence
from typing import Final, Protocol

from popbridge.contract import RemoteMessage

_UIDL_SAFE: Final = re.compile(r"[\x21-\x7e]{1,70}")
_HASHED_PREFIX: Final = "~"


def uidl_for(identity: str) -> str:
    """The UIDL for one backend identity (see the module docstring)."""
    if _UIDL_SAFE.fullmatch(identity) and not identity.startswith(_HASHED_PREFIX):
        return identity
    digest = hashlib.sha256(identity.encode("utf-8")).digest()
    return _HASHED_PREFIX + base64.urlsafe_b64encode(digest).decode("ascii")[:43]


def is_valid_uidl(uidl: str) -> bool:
    """RFC 1939 section 7: 1 to 70 characters from 0x21 to 0x7E."""
    return _UIDL_SAFE.fullmatch(uidl) is not None


class UidlMap(Protocol):
    """Assigns UIDLs to a listing; a persistent store can implement this too."""

    async def assign(
        self, account: str, messages: Sequence[RemoteMessage], *, withheld: Collection[str] = ()
    ) -> list[str]:
        """One UIDL per listed message; `withheld` identities are in the folder but not
        listed on purpose, and keep their UIDLs to themselves."""
        ...


class DerivedUidls:
    """The stateless `UidlMap`: every UIDL is `uidl_for(identity)`."""

    async def assign(
        self, account: str, messages: Sequence[RemoteMessage], *, withheld: Collection[str] = ()
    ) -> list[str]:
        return [uidl_for(m.identity) for m in messages]
