"""Local password hashes: scrypt with per-user salt, constant-time checks, equal work."""

from __future__ import annotations

import pytest

from popbridge.accounts import passwords
from popbridge.accounts.passwords import DEFAULT_PARAMS, PasswordHasher, ScryptParams, hash_password
from tests.accounts.conftest import FAST


def test_default_cost_is_owasp_strength() -> None:
    # OWASP's scrypt equivalents: N=2^15 needs r=8, p=3 (32 MiB each)
    assert (DEFAULT_PARAMS.n, DEFAULT_PARAMS.r, DEFAULT_PARAMS.p) == (2**15, 8, 3)
    assert DEFAULT_PARAMS.maxmem > 128 * 2**15 * 8


async def test_hash_then_verify(hasher: PasswordHasher) -> None:
    stored = await hasher.hash("correct horse")
    assert stored["alg"] == "scrypt" and stored["n"] == FAST.n
    assert await hasher.verify("correct horse", stored)
    assert not await hasher.verify("correct horsE", stored)
    assert not await hasher.verify("", stored)


def test_salt_is_per_hash() -> None:
    one, two = hash_password("same", FAST), hash_password("same", FAST)
    assert one["salt"] != two["salt"] and one["hash"] != two["hash"]


def test_stored_parameters_win_over_the_current_ones() -> None:
    stored = hash_password("pw", ScryptParams(n=2**5, r=4, p=2))
    assert passwords.verify_password("pw", stored, FAST)


@pytest.mark.parametrize(
    "damage",
    [
        {"alg": "md5"},
        {"n": 3},
        {"salt": "not base64!"},
        {"hash": "AAAA"},
        {"salt": None},
    ],
)
def test_unusable_hash_never_matches(damage: dict[str, object]) -> None:
    stored = hash_password("pw", FAST) | damage
    assert not passwords.verify_password("pw", stored, FAST)
    with pytest.raises(ValueError):
        passwords.check_hash(stored)


async def test_unknown_user_costs_a_derivation(
    hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[ScryptParams] = []
    real = passwords._derive

    def counting(password: str, salt: bytes, params: ScryptParams) -> bytes:
        calls.append(params)
        return real(password, salt, params)

    monkeypatch.setattr(passwords, "_derive", counting)
    assert not await hasher.verify("anything", None)
    stored = hash_password("pw", FAST)
    calls.clear()
    assert not await hasher.verify("wrong", stored)
    assert not await hasher.verify("anything", None)
    assert calls == [FAST, FAST]  # a wrong password and an unknown user: the same work


def test_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return a == b

    monkeypatch.setattr("popbridge.accounts.passwords.hmac.compare_digest", spy)
    stored = hash_password("pw", FAST)
    assert passwords.verify_password("pw", stored, FAST)
    assert not passwords.verify_password("pw", None, FAST)
    assert len(compared) == 2


@pytest.mark.parametrize(
    ("n", "r", "p"), [(1, 8, 1), (3, 8, 1), (2**21, 8, 1), (16, 0, 1), (16, 8, 17)]
)
def test_bad_parameters_are_refused(n: int, r: int, p: int) -> None:
    with pytest.raises(ValueError):
        ScryptParams(n, r, p)


async def test_real_cost_round_trip() -> None:
    """One hash at the production cost, so the maxmem headroom is known to suffice."""
    real = PasswordHasher()
    stored = await real.hash("pw")
    assert await real.verify("pw", stored)
