"""The key ring and the record format: sealing, rotation, and tamper detection."""

from __future__ import annotations

import base64
import json

import pytest

from popbridge.accounts import Keyring, Unsealable, Upstream, canonical_name, generate_key
from popbridge.accounts.crypto import BadKey, key_id
from popbridge.accounts.passwords import hash_password
from popbridge.accounts.records import AccountRecord, BadRecord, open_secret, seal_record
from tests.accounts.conftest import FAST

UPSTREAM = Upstream("alice@example.org", backend={"host": "imap.example.org", "port": 993})


def record(keyring: Keyring, name: str = "printer", secret: str = "upstream-pw") -> AccountRecord:
    return seal_record(name, hash_password("local", FAST), UPSTREAM, secret, keyring)


def test_keys_in_any_base64_spelling() -> None:
    raw = bytes(range(32))
    standard = base64.b64encode(raw).decode()
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert Keyring.parse(standard).primary_id == Keyring.parse(urlsafe).primary_id == key_id(raw)
    two = Keyring.parse(f"{generate_key()}, {standard}\n")
    assert two.primary_id != key_id(raw)


@pytest.mark.parametrize("text", ["", "not-base64!!", base64.b64encode(b"short").decode()])
def test_bad_keys_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(BadKey) as caught:
        Keyring.parse(text)
    assert not text or text not in str(caught.value)


def test_repr_shows_no_key_material() -> None:
    key = generate_key()
    assert key not in repr(Keyring.parse(key))


def test_record_round_trip_and_secret(keyring: Keyring) -> None:
    sealed = record(keyring)
    again = AccountRecord.from_bytes(sealed.to_bytes())
    assert again == sealed
    assert open_secret(again, keyring) == "upstream-pw"
    stored = json.loads(sealed.to_bytes())
    assert stored["v"] == 1 and stored["secret"]["kid"] == keyring.primary_id
    assert b"upstream-pw" not in sealed.to_bytes() and "upstream-pw" not in repr(sealed)


def test_rotation_old_key_opens_new_key_seals(keyring: Keyring) -> None:
    old = record(keyring)
    rotated = Keyring.parse(
        f"{generate_key()} {base64.b64encode(keyring._keys[keyring.primary_id]).decode()}"
    )
    assert not rotated.is_current(old.secret)
    assert open_secret(old, rotated) == "upstream-pw"
    with pytest.raises(Unsealable, match="not configured"):
        open_secret(old, Keyring.parse(generate_key()))


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r | {"upstream": r["upstream"] | {"user": "mallory@example.org"}},
        lambda r: r | {"upstream": r["upstream"] | {"backend": {"host": "evil.example"}}},
        lambda r: r | {"password": hash_password("attacker", FAST)},
        lambda r: r | {"name": "other"},
        lambda r: r | {"secret": r["secret"] | {"data": base64.b64encode(b"x" * 40).decode()}},
    ],
)
def test_any_edit_of_the_record_makes_the_secret_unusable(keyring: Keyring, edit) -> None:  # type: ignore[no-untyped-def]
    stored = json.loads(record(keyring).to_bytes())
    tampered = AccountRecord.from_bytes(json.dumps(edit(stored)).encode())
    with pytest.raises(Unsealable):
        open_secret(tampered, keyring)


def test_a_secret_moved_to_another_record_does_not_open(keyring: Keyring) -> None:
    victim = json.loads(record(keyring, "boss", "boss-secret").to_bytes())
    mine = json.loads(record(keyring, "intern", "intern-secret").to_bytes())
    mine["secret"] = victim["secret"]
    with pytest.raises(Unsealable):
        open_secret(AccountRecord.from_bytes(json.dumps(mine).encode()), keyring)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"v": 2}',
        b'{"v": 1, "name": "x"}',
        b'{"v": 1, "name": "x", "password": {}}',
    ],
)
def test_unreadable_records(data: bytes) -> None:
    with pytest.raises(BadRecord):
        AccountRecord.from_bytes(data)


def test_canonical_names() -> None:
    assert canonical_name("Printer") == canonical_name("PRINTER") == "printer"
    assert canonical_name("Stra\u00dfe") == "strasse"
    for bad in ("", "two words", "tab\there", "nul\0", "x" * 256):
        with pytest.raises(ValueError):
            canonical_name(bad)


def test_upstream_consistency() -> None:
    with pytest.raises(ValueError):
        Upstream("")
    with pytest.raises(ValueError):
        Upstream("u", mechanism="kerberos")
    with pytest.raises(ValueError):
        Upstream("u", mechanism="oauth2")
    with pytest.raises(ValueError):
        Upstream("u", oauth2="google")
    assert Upstream("u", "oauth2", oauth2="google").to_json()["oauth2"] == "google"
