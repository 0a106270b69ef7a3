"""The key ring that seals upstream secrets: AES-256-GCM under operator keys, with rotation.

This module owns the encryption of the secrets in mapped-account records. A key is 32 random
bytes written in base64 (`openssl rand -base64 32`); the operator gives one or more of them
(`key_file` or `key_env`, separated by spaces or commas): the first seals, every one opens,
so a key is rotated by putting a new one first, re-sealing (`popbridge accounts rekey`) and
then dropping the old one. AES-GCM is authenticated encryption, and the rest of the record is
its associated data, so a record edited in the store (another user's secret pasted in, a
password hash swapped) no longer opens: a write to the store without the key cannot move a
mailbox to another local user. Each sealed value names its key by a short id, never the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12  # 96-bit random nonces: NIST SP 800-38D 8.2.2, safe far beyond our volume
CIPHER = "A256GCM"


class BadKey(ValueError):
    """A key could not be parsed (the message never contains key material)."""


class Unsealable(Exception):
    """A sealed value could not be opened: wrong key, or the record was altered."""


def generate_key() -> str:
    """A new random key, as the base64 text a key file holds."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def key_id(key: bytes) -> str:
    """A short, non-secret name for a key: the start of a domain-separated SHA-256."""
    return hashlib.sha256(b"popbridge account key id\0" + key).hexdigest()[:16]


def _parse_key(text: str, position: int) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise BadKey(f"key {position} is not base64") from None
    if len(raw) != KEY_BYTES:
        raise BadKey(f"key {position} is {len(raw)} bytes; keys must be {KEY_BYTES} bytes")
    return raw


class Keyring:
    """Keys by id; `seal` uses the first, `open` any of them."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise BadKey("no key given")
        self._keys = {key_id(key): key for key in keys}
        self.primary_id = key_id(keys[0])

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """Keys written in base64 (standard or URL-safe), separated by spaces or commas."""
        words = [word for word in re.split(r"[\s,]+", text) if word]
        return cls([_parse_key(word, index + 1) for index, word in enumerate(words)])

    def __repr__(self) -> str:
        return f"Keyring(primary={self.primary_id}, keys={len(self._keys)})"

    def seal(self, plaintext: bytes, associated: bytes) -> dict[str, str]:
        """Encrypt under the first key, binding `associated` (the rest of the record)."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        data = AESGCM(self._keys[self.primary_id]).encrypt(nonce, plaintext, associated)
        return {
            "alg": CIPHER,
            "kid": self.primary_id,
            "nonce": base64.b64encode(nonce).decode("ascii"),
            "data": base64.b64encode(data).decode("ascii"),
        }

    def open(self, sealed: Mapping[str, str], associated: bytes) -> bytes:
        """Decrypt; raises `Unsealable` for an unknown key, a wrong key or altered data."""
        if sealed.get("alg") != CIPHER:
            raise Unsealable(f"unknown cipher {sealed.get('alg')!r}")
        key = self._keys.get(str(sealed.get("kid")))
        if key is None:
            raise Unsealable(f"sealed with key {sealed.get('kid')!r}, which is not configured")
        try:
            nonce = base64.b64decode(sealed["nonce"], validate=True)
            data = base64.b64decode(sealed["data"], validate=True)
            return AESGCM(key).decrypt(nonce, data, associated)
        except (KeyError, binascii.Error, ValueError, InvalidTag):
            raise Unsealable("the sealed secret does not match its record (altered?)") from None

    def is_current(self, sealed: Mapping[str, str]) -> bool:
        """True if `sealed` is under the first key (nothing to re-seal)."""
        return sealed.get("kid") == self.primary_id
