"""Leases on the KV store: one node drives a transaction at a time; a stalled node is fenced off."""

from __future__ import annotations

import time

import pytest

from mezzo.storage.kv import KVStore
from mezzo.transactions.store import Active, LostLease, TxLog, active_put


async def test_one_holder_at_a_time_and_takeover_after_expiry(store: KVStore) -> None:
    log = TxLog.on(store)
    await log.txn([active_put("g1", Active(due=0))])
    first = await log.acquire("g1", "node-a", ttl=30)
    assert first is not None
    assert await log.acquire("g1", "node-b", ttl=30) is None  # held and not expired
    await first.renew()
    assert await log.acquire("g1", "node-b", ttl=30) is None
    # node-a stalls past its lease: pretend its lease ran out
    await log.txn([active_put("g1", Active(due=0, owner="node-a", until=time.time() - 1))])
    second = await log.acquire("g1", "node-b", ttl=30)
    assert second is not None
    with pytest.raises(LostLease):
        await first.write([])  # the stalled node's next write is refused
    await second.write([], finish=True)
    assert (await log.active("g1"))[0] is None


async def test_released_lease_is_free_and_due_later(store: KVStore) -> None:
    log = TxLog.on(store)
    await log.txn([active_put("g2", Active(due=0))])
    lease = await log.acquire("g2", "node-a", ttl=30)
    assert lease is not None
    await lease.release(due=time.time() + 100)
    active, _ = await log.active("g2")
    assert active is not None and active.owner == "" and active.due > time.time()
    assert await log.acquire("g2", "node-b", ttl=30) is not None
