"""What every session of a process shares, and what the operator configured per listener.

`Services` holds the process-wide collaborators (the backend, the store's locks, UID map,
sizes and listings, the authenticator, throttling); `SessionPolicy` holds one listener's
rules (TLS requirements, SASL mechanisms, the disposition applied at UPDATE).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from popbridge.accounts.passthrough import Authenticator, PassthroughAuthenticator
from popbridge.contract import Backend, Disposition, DispositionKind
from popbridge.pop3 import sasl
from popbridge.session.logingate import LoginGate
from popbridge.session.throttle import Throttle, ThrottlePolicy
from popbridge.store.listings import ListingMemories, MemoryListings
from popbridge.store.locks import LocalLocks, MaildropLocks
from popbridge.store.sizes import MemorySizeCache, SizeCache
from popbridge.store.uidl import DerivedUidls, UidlMap


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """What the operator configured for sessions on one listener."""

    plaintext_auth: bool = False
    starttls: bool = False
    disposition: Disposition = field(default_factory=lambda: Disposition(DispositionKind.EXPUNGE))
    mark_seen_on_retr: bool = False
    max_auth_failures: int = 3
    sasl_mechanisms: tuple[str, ...] = sasl.ALL_MECHANISMS
    implementation: str = "popbridge"


@dataclass(slots=True)
class Services:
    """Process-wide collaborators shared by every session."""

    backend: Backend
    locks: MaildropLocks = field(default_factory=LocalLocks)
    uidls: UidlMap = field(default_factory=DerivedUidls)
    sizes: SizeCache = field(default_factory=MemorySizeCache)
    listings: ListingMemories = field(default_factory=MemoryListings)
    authenticator: Authenticator | None = None
    throttle: Throttle = field(default_factory=lambda: Throttle(ThrottlePolicy()))
    logins: LoginGate = field(default_factory=LoginGate)
    sasl_mechanisms: tuple[str, ...] = sasl.ALL_MECHANISMS  # what the authenticator can use

    def __post_init__(self) -> None:
        if self.authenticator is None:
            self.authenticator = PassthroughAuthenticator(self.backend)
