"""The in-memory store (`[store] type = "memory"`): derived UIDLs, local locks, records."""

from __future__ import annotations

from popbridge.contract import RemoteMessage
from popbridge.store import MemoryStore


async def test_memory_store_serves_a_single_run() -> None:
    store = MemoryStore()
    assert await store.uidls.assign("a", [RemoteMessage("7.1", 1)]) == ["7.1"]
    lease = await store.locks.try_acquire("a")
    assert lease is not None and await store.locks.try_acquire("a") is None
    await lease.release()
    records = store.accounts
    await records.put("b", b"\x00")
    await records.put("a", b"")
    assert await records.get("b") == b"\x00" and await records.names() == ["a", "b"]
    assert await records.delete("b") is True and await records.delete("b") is False
    await store.close()
