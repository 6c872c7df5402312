"""Mezzo's ketama ring and twemproxy's (hash md5, distribution ketama, hash_tag "{}") agree key for key."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.driver_info import DriverInfo

from mezzo.cache.distributed.backend import Call, HealthPolicy, NodeAddress
from mezzo.cache.distributed.ring import KetamaRing
from mezzo.cache.distributed.sharded import ShardConfig, ShardedBackend
from mezzo.testing.fixtures import free_port

from .redis_procs import RedisServers, start_nutcracker


async def test_keys_written_through_twemproxy_are_found_by_mezzo(redis_servers: RedisServers) -> None:
    servers = [redis_servers.start() for _ in range(3)]
    port = free_port()
    twemproxy = start_nutcracker(redis_servers.workdir, servers, port)
    backend = ShardedBackend([ShardConfig(f"127.0.0.1:{s.port}", 1, NodeAddress("127.0.0.1", s.port))
                              for s in servers], HealthPolicy())
    proxy = aioredis.Redis(port=port, protocol=2, driver_info=DriverInfo(name=None, lib_version=None))  # no SETINFO
    try:
        keys = [f"compat:{i}" for i in range(500)] + [f"cart:{{7}}:{i}" for i in range(20)]
        async with proxy.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, key)
            await pipe.execute()
        ring = KetamaRing((f"127.0.0.1:{s.port}", 1) for s in servers)
        for server in servers:  # every key sits where Mezzo's ring puts it
            conn = aioredis.Redis(port=server.port)
            held = {k.decode() for k in await conn.keys("*")}
            await conn.aclose()
            assert held == {k for k in keys if ring.node_for(k.encode()) == f"127.0.0.1:{server.port}"}
            assert held  # and each server got some
        replies = await backend.run([Call(k.encode(), (b"GET", k.encode()), "read") for k in keys])
        assert replies == [k.encode() for k in keys]
    finally:
        await proxy.aclose()
        await backend.close()
        twemproxy.kill()
        twemproxy.wait()
