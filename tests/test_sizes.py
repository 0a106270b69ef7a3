"""The measured-size cache: corrections apply per account and the cache stays bounded."""

from __future__ import annotations

from popbridge.contract import RemoteMessage
from popbridge.store.sizes import MemorySizeCache


async def test_corrections_apply_to_the_same_account_only() -> None:
    cache = MemorySizeCache()
    listing = [RemoteMessage("a", 10), RemoteMessage("b", 20)]
    assert await cache.correct("alice", listing) == listing
    await cache.record("alice", "b", 22)
    assert [m.size for m in await cache.correct("alice", listing)] == [10, 22]
    assert [m.size for m in await cache.correct("bob", listing)] == [10, 20]


async def test_least_recently_used_sizes_are_dropped_past_the_limit() -> None:
    cache = MemorySizeCache(limit=2)
    await cache.record("u", "a", 1)
    await cache.record("u", "b", 2)
    await cache.correct("u", [RemoteMessage("a", 0)])  # touches a
    await cache.record("u", "c", 3)
    sizes = [m.size for m in await cache.correct("u", [RemoteMessage(i, 0) for i in "abc"])]
    assert sizes == [1, 0, 3]
