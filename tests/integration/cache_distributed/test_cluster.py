"""A Cache on a three-node Redis Cluster of its own, through the RESP proxy."""

from __future__ import annotations

import httpx
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from mezzo.testing.fixtures import RunningNode, wait_for

from .redis_procs import RedisServers


async def test_proxy_over_redis_cluster(node: RunningNode, redis_servers: RedisServers) -> None:
    members = redis_servers.cluster(3)
    urls = ", ".join(f"'{m.url}'" for m in members)
    async with node.client() as client:
        await client.resources.apply("apiVersion: mezzo.dev/v1\nkind: Cache\nmetadata: {name: carts}\n"
                                     f"spec: {{backend: redis-cluster, urls: [{urls}], database: 5}}\n"
                                     "---\napiVersion: mezzo.dev/v1\nkind: Cache\nmetadata: {name: local}\n")
    async with httpx.AsyncClient(base_url=node.url, headers={"authorization": f"Bearer {node.token}"}) as http:
        async def ready() -> bool:
            response = await http.get("/v1/cache/carts/nodes")
            return response.status_code == 200 and response.json()["backend"] == "redis-cluster"

        await wait_for(ready, timeout=10)
        rebalance = await http.post("/v1/cache/carts:rebalance")
        assert rebalance.status_code == 202 and "redis-cli --cluster rebalance" in rebalance.json()["rebalance"]["detail"]
        embedded = await http.post("/v1/cache/local:rebalance")
        assert embedded.status_code == 409 and embedded.headers["content-type"] == "application/problem+json"
        missing = await http.get("/v1/cache/nope/nodes")
        assert missing.status_code == 404
    port = int(node.node.url("resp").rsplit(":", 1)[1])
    r = aioredis.Redis(port=port, password=node.token, db=5)
    direct = RedisCluster(host="127.0.0.1", port=members[0].port)
    try:
        keys = [f"item:{i}" for i in range(100)]  # spread over every slot range
        assert await r.mset({k: k.upper() for k in keys})
        assert await r.mget(keys) == [k.upper().encode() for k in keys]
        assert await direct.get("item:42") == b"ITEM:42"  # really in the cluster
        assert len({direct.keyslot(k) for k in keys}) > 50
        assert await r.dbsize() == 100
        assert sorted(await r.keys("item:*")) == sorted(k.encode() for k in keys)
        assert sorted([k async for k in r.scan_iter(count=13)]) == sorted(k.encode() for k in keys)
        assert await r.delete(*keys[:50]) == 50 and await r.exists(*keys) == 50
        async with r.pipeline(transaction=False) as pipe:
            for i in range(30):
                pipe.incr(f"{{user:{i % 3}}}:visits")
            counts = await pipe.execute()
        assert counts[-3:] == [10, 10, 10]
        assert await r.hset("h", mapping={"a": "1"}) == 1 and await r.hgetall("h") == {b"a": b"1"}
    finally:
        await r.aclose()
        await direct.aclose()
