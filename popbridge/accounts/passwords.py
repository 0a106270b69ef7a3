"""Local passwords of mapped accounts: scrypt hashes with a per-user salt, checked in constant time.

This module owns how a local POP3 password is stored and checked. It uses scrypt (RFC 7914)
from the standard library, a memory-hard KDF, with OWASP's recommended cost (N=2^15, r=8,
p=3: 32 MiB and a few hundred milliseconds per check), so a stolen store is slow to attack
offline. The parameters are stored with each hash, so they can be raised later without
invalidating old hashes. Hashing runs in a worker thread (scrypt releases the GIL) behind a
semaphore, so logins neither stall the event loop nor take unbounded memory. An unknown user
costs the same hash as a known one (conformance S-5), so timing does not reveal who exists.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ALGORITHM = "scrypt"
SALT_BYTES = 16
HASH_BYTES = 32
_DUMMY_SALT = bytes(SALT_BYTES)


@dataclass(frozen=True, slots=True)
class ScryptParams:
    """scrypt's cost: `n` (CPU/memory, a power of two), block size `r`, parallelism `p`."""

    n: int = 2**15
    r: int = 8
    p: int = 3

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1) or self.n > 2**20:
            raise ValueError("scrypt n must be a power of two between 2 and 2**20")
        if not (1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise ValueError("scrypt r must be 1..32 and p 1..16")

    @property
    def maxmem(self) -> int:
        """The memory scrypt needs (128 * n * r) plus headroom: OpenSSL refuses more than this."""
        return 128 * self.n * self.r + (1 << 20)


DEFAULT_PARAMS = ScryptParams()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, params: ScryptParams) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=params.maxmem,
        dklen=HASH_BYTES,
    )


def hash_password(password: str, params: ScryptParams = DEFAULT_PARAMS) -> dict[str, Any]:
    """A new hash with a fresh random salt, as the JSON object an account record stores."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _derive(password, salt, params)
    return {
        "alg": ALGORITHM, "n": params.n, "r": params.r, "p": params.p,
        "salt": _b64(salt), "hash": _b64(digest),
    }  # fmt: skip


def _parse(stored: Mapping[str, Any]) -> tuple[ScryptParams, bytes, bytes]:
    """The parameters, salt and hash of a stored object; ValueError if it is not ours."""
    if stored.get("alg") != ALGORITHM:
        raise ValueError(f"unknown password algorithm {stored.get('alg')!r}")
    params = ScryptParams(int(stored["n"]), int(stored["r"]), int(stored["p"]))
    salt = base64.b64decode(stored["salt"], validate=True)
    digest = base64.b64decode(stored["hash"], validate=True)
    if len(salt) < 8 or len(digest) != HASH_BYTES:
        raise ValueError("salt or hash of the wrong length")
    return params, salt, digest


def check_hash(stored: Mapping[str, Any]) -> None:
    """Raise ValueError unless `stored` is a well-formed hash object."""
    try:
        _parse(stored)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed password hash: {exc!r}") from None


def verify_password(password: str, stored: Mapping[str, Any] | None, dummy: ScryptParams) -> bool:
    """True if `password` matches `stored`. With no (or an unusable) hash it derives a key with
    the `dummy` parameters anyway and returns False, so an unknown user costs the same."""
    try:
        params, salt, expected = _parse(stored) if stored is not None else (dummy, b"", b"")
    except (KeyError, TypeError, ValueError):
        params, salt, expected = dummy, b"", b""
    if not expected:
        hmac.compare_digest(_derive(password, _DUMMY_SALT, params), bytes(HASH_BYTES))
        return False
    # conformance S-5: compare the derived key in constant time
    return hmac.compare_digest(_derive(password, salt, params), expected)


class PasswordHasher:
    """Hashes and checks passwords off the event loop, a bounded number at a time."""

    def __init__(self, params: ScryptParams = DEFAULT_PARAMS, *, concurrency: int = 0) -> None:
        self.params = params
        self._slots = asyncio.Semaphore(concurrency or max(1, min(4, os.cpu_count() or 1)))

    async def hash(self, password: str) -> dict[str, Any]:
        async with self._slots:
            return await asyncio.to_thread(hash_password, password, self.params)

    async def verify(self, password: str, stored: Mapping[str, Any] | None) -> bool:
        """Check `password`; `stored=None` (unknown user) costs the same and is False."""
        async with self._slots:
            return await asyncio.to_thread(verify_password, password, stored, self.params)
