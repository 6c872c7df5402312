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


async def test_ahead_survives_a_takeover_and_goes_only_with_the_holders_write(store: KVStore) -> None:
    """``Active.ahead`` (the holder may have called actions it has not marked yet) stays in the record
    when another node takes the lease, and is cleared only by a write of a lease that cleared it."""
    log = TxLog.on(store)
    await log.txn([active_put("g3", Active(due=0, owner="node-a", until=time.time() - 1, ahead=True))])
    lease = await log.acquire("g3", "node-b", ttl=30)
    assert lease is not None and lease.ahead
    assert (await log.active("g3"))[0].ahead  # type: ignore[union-attr]
    await lease.renew()
    assert (await log.active("g3"))[0].ahead  # type: ignore[union-attr]
    lease.ahead = False
    await lease.renew()
    assert not (await log.active("g3"))[0].ahead  # type: ignore[union-attr]


async def test_a_call_goes_ahead_only_with_time_to_spare_on_the_lease(store: KVStore) -> None:
    log = TxLog.on(store)
    await log.txn([active_put("g4", Active(due=0, ahead=True))])
    lease = await log.acquire("g4", "node-a", ttl=30)
    assert lease is not None
    assert lease.may_call_ahead(8.0)
    assert not lease.may_call_ahead(29.5)  # the call could outlast the lease
    lease.active = lease.active.model_copy(update={"until": time.time() + 14})
    assert not lease.may_call_ahead(1.0)  # under half the lease left: write (and renew) first
    lease.ahead = False
    await lease.renew()
    assert not lease.may_call_ahead(1.0)
