"""Adding and removing nodes online: keys move in the background and stay readable throughout."""

from __future__ import annotations

import redis.asyncio as aioredis

from mezzo.cache.distributed.backend import Call, HealthPolicy, NodeAddress
from mezzo.cache.distributed.ring import KetamaRing
from mezzo.cache.distributed.sharded import ShardConfig, ShardedBackend
from mezzo.testing.fixtures import wait_for

from .redis_procs import RedisProcess, RedisServers

POLICY = HealthPolicy(timeout=1.0)


def config(server: RedisProcess) -> ShardConfig:
    return ShardConfig(f"127.0.0.1:{server.port}", 1, NodeAddress("127.0.0.1", server.port))


async def holders(servers: list[RedisProcess], key: str) -> list[int]:
    found = []
    for server in servers:
        conn = aioredis.Redis(port=server.port)
        if await conn.exists(key):
            found.append(server.port)
        await conn.aclose()
    return found


async def test_adding_a_node_moves_its_share_and_reads_never_miss(redis_servers: RedisServers) -> None:
    servers = [redis_servers.start() for _ in range(3)]
    backend = ShardedBackend([config(s) for s in servers[:2]], POLICY)
    keys = [f"k{i}".encode() for i in range(400)]
    try:
        replies = await backend.run([Call(k, (b"SET", k, k, b"PX", b"600000"), "write") for k in keys])
        assert replies == [b"OK"] * len(keys)
        await backend.reconfigure([config(s) for s in servers], POLICY)
        migration = backend.migration
        assert migration is not None and migration.task is not None  # runs in the background
        migration.task.cancel()  # hold it still: keys of the new node are on the old owners yet
        third = aioredis.Redis(port=servers[2].port)
        assert await third.dbsize() == 0
        # every key reads back with its value, through the fallback to the old owner
        assert await backend.run([Call(k, (b"GET", k), "read") for k in keys]) == keys
        assert await third.dbsize() == 0
        await third.aclose()
        await backend.rebalance()  # starts it again, still falling back to the first ring
        assert await backend.run([Call(k, (b"GET", k), "read") for k in keys]) == keys
        # a write mid-migration is not overwritten by the copy the migration makes
        await backend.run([Call(b"k7", (b"SET", b"k7", b"new"), "write")])
        await wait_for(lambda: backend.migration is None, timeout=30)
        assert backend.last_migration is not None and backend.last_migration.errors == 0
        ring = KetamaRing((f"127.0.0.1:{s.port}", 1) for s in servers)
        third = f"127.0.0.1:{servers[2].port}"
        moved = [k for k in keys if ring.node_for(k) == third]
        assert 0 < len(moved) < len(keys)
        for key in keys[:60]:  # each key now sits on its owner alone, with its TTL kept
            assert await holders(servers, key.decode()) == [int(ring.node_for(key).rsplit(":", 1)[1])]
        assert (await backend.run([Call(b"k7", (b"GET", b"k7"), "read")]))[0] == b"new"
        ttls = await backend.run([Call(k, (b"PTTL", k), "write") for k in moved if k != b"k7"])
        assert all(0 < t <= 600000 for t in ttls)
        assert await backend.run([Call(k, (b"GET", k), "read") for k in keys if k != b"k7"]) == \
            [k for k in keys if k != b"k7"]
    finally:
        await backend.close()


async def test_removing_a_node_drains_it_first(redis_servers: RedisServers) -> None:
    servers = [redis_servers.start() for _ in range(3)]
    backend = ShardedBackend([config(s) for s in servers], POLICY)
    keys = [f"r{i}".encode() for i in range(300)]
    try:
        await backend.run([Call(k, (b"SET", k, b"v" + k), "write") for k in keys])
        await backend.reconfigure([config(s) for s in servers[:2]], POLICY)
        assert await backend.run([Call(k, (b"GET", k), "read") for k in keys]) == [b"v" + k for k in keys]
        await wait_for(lambda: backend.migration is None, timeout=30)
        left = aioredis.Redis(port=servers[2].port)
        assert await left.dbsize() == 0  # everything moved off the removed node
        await left.aclose()
        assert await backend.run([Call(k, (b"GET", k), "read") for k in keys]) == [b"v" + k for k in keys]
        assert f"127.0.0.1:{servers[2].port}" not in {n["name"] for n in backend.status()["nodes"]}
    finally:
        await backend.close()


async def test_a_write_mid_migration_moves_the_key_first(redis_servers: RedisServers) -> None:
    """INCR on a key whose owner changed must see the old value, not start from zero."""
    servers = [redis_servers.start() for _ in range(2)]
    backend = ShardedBackend([config(servers[0])], POLICY)
    keys = [f"c{i}".encode() for i in range(200)]
    try:
        await backend.run([Call(k, (b"SET", k, b"10"), "write") for k in keys])
        await backend.reconfigure([config(s) for s in servers], POLICY)
        counts = await backend.run([Call(k, (b"INCR", k), "write") for k in keys])
        assert counts == [11] * len(keys)
        await wait_for(lambda: backend.migration is None, timeout=30)
        assert await backend.run([Call(k, (b"GET", k), "read") for k in keys]) == [b"11"] * len(keys)
    finally:
        await backend.close()


async def test_a_node_that_keeps_its_name_but_moves_address_takes_its_keys_along(redis_servers: RedisServers) -> None:
    old, new, other = (redis_servers.start() for _ in range(3))
    named = ShardConfig("cache-1", 1, NodeAddress("127.0.0.1", old.port))
    backend = ShardedBackend([named, config(other)], POLICY)
    keys = [f"m{i}".encode() for i in range(200)]
    try:
        await backend.run([Call(k, (b"SET", k, k), "write") for k in keys])
        await backend.reconfigure([ShardConfig("cache-1", 1, NodeAddress("127.0.0.1", new.port)), config(other)], POLICY)
        migration = backend.migration
        assert migration is not None and migration.task is not None
        migration.task.cancel()  # nothing moved yet: reads must fall back to the old address
        assert await backend.run([Call(k, (b"GET", k), "read") for k in keys]) == keys
        await backend.rebalance()
        await wait_for(lambda: backend.migration is None, timeout=30)
        moved = aioredis.Redis(port=new.port)
        gone = aioredis.Redis(port=old.port)
        assert await moved.dbsize() > 0 and await gone.dbsize() == 0
        await moved.aclose()
        await gone.aclose()
        assert await backend.run([Call(k, (b"GET", k), "read") for k in keys]) == keys
    finally:
        await backend.close()


async def test_new_timeouts_or_a_new_name_for_the_same_server_lose_no_key(redis_servers: RedisServers) -> None:
    servers = [redis_servers.start() for _ in range(2)]
    backend = ShardedBackend([config(s) for s in servers], POLICY)
    keys = [f"t{i}".encode() for i in range(200)]
    try:
        await backend.run([Call(k, (b"SET", k, k), "write") for k in keys])
        await backend.reconfigure([config(s) for s in servers], HealthPolicy(timeout=2.0))
        assert backend.migration is None  # same ring: nothing to move
        assert backend.pool.shards[config(servers[0]).name].active.link.timeout == 2.0
        renamed = [ShardConfig("first", 1, NodeAddress("127.0.0.1", servers[0].port)), config(servers[1])]
        await backend.reconfigure(renamed, HealthPolicy(timeout=2.0))
        await wait_for(lambda: backend.migration is None, timeout=30)
        assert await backend.run([Call(k, (b"GET", k), "read") for k in keys]) == keys
        total = 0
        for server in servers:
            conn = aioredis.Redis(port=server.port)
            total += await conn.dbsize()
            await conn.aclose()
        assert total == len(keys)
    finally:
        await backend.close()
