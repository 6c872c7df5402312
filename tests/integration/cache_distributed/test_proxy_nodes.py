"""The Cache kind and the RESP proxy over a ketama ring of three redis-server processes."""

from __future__ import annotations

import httpx
import pytest
import redis.asyncio as aioredis

from mezzo.cache.distributed.ring import KetamaRing
from mezzo.cache.engine import Engine
from mezzo.cache.model import CacheSpec
from mezzo.cache.server import CacheServer
from mezzo.sdk.errors import APIError
from mezzo.testing.fixtures import RunningNode, wait_for

from .redis_procs import RedisServers


def resp_port(node: RunningNode) -> int:
    return int(node.node.url("resp").rsplit(":", 1)[1])


def manifest(name: str, nodes: list[str], database: int | None = None, extra: str = "") -> str:
    listed = "".join(f"    - url: {url}\n" for url in nodes)
    db = f"  database: {database}\n" if database is not None else ""
    return (f"apiVersion: mezzo.dev/v1\nkind: Cache\nmetadata:\n  name: {name}\nspec:\n  backend: nodes\n{db}"
            f"  nodes:\n{listed}{extra}")


async def routed(node: RunningNode, namespace: str, count: int) -> None:
    """Wait until the node has a backend with ``count`` ring members for ``namespace``."""
    async with httpx.AsyncClient(base_url=node.url, headers={"authorization": f"Bearer {node.token}"}) as http:
        async def ready() -> bool:
            response = await http.get(f"/v1/cache/{namespace}/nodes")
            return response.status_code == 200 and response.json().get("ringMembers") == count

        await wait_for(ready, timeout=10)


async def test_keys_land_on_their_ketama_node_and_multi_key_commands_split(node: RunningNode,
                                                                            redis_servers: RedisServers) -> None:
    servers = [redis_servers.start() for _ in range(3)]
    async with node.client() as client:
        await client.resources.apply(manifest("sessions", [s.url for s in servers], database=3))
    await routed(node, "sessions", 3)
    ring = KetamaRing((f"127.0.0.1:{s.port}", 1) for s in servers)
    direct = {f"127.0.0.1:{s.port}": aioredis.Redis(port=s.port) for s in servers}
    r = aioredis.Redis(port=resp_port(node), password=node.token, db=3)
    try:
        keys = [f"user:{i}" for i in range(60)]
        assert await r.mset({k: f"v{i}" for i, k in enumerate(keys)})
        assert await r.mget(keys) == [f"v{i}".encode() for i in range(60)]
        for key in keys:  # each key is on the node ketama names, and only there
            owner = ring.node_for(key.encode())
            for name, conn in direct.items():
                assert (await conn.get(key) is not None) == (name == owner), (key, name, owner)
        used = {ring.node_for(k.encode()) for k in keys}
        assert len(used) == 3
        # hash tags keep related keys on one node
        tagged = [f"cart:{{42}}:{i}" for i in range(10)]
        await r.mset(dict.fromkeys(tagged, "x"))
        assert {ring.node_for(k.encode()) for k in tagged} == {ring.node_for(b"42")}
        assert await r.exists(*tagged, "nope") == 10
        assert await r.delete(*keys[:30], "nope") == 30
        assert await r.mget(keys[:2]) == [None, None]
        assert await r.dbsize() == 40
        assert sorted(await r.keys("cart:*")) == sorted(k.encode() for k in tagged)
        scanned = [k async for k in r.scan_iter(match="user:*", count=7)]
        assert sorted(scanned) == sorted(k.encode() for k in keys[30:])
        # strings, counters, hashes and TTLs pass through
        assert await r.set("n", 5) and await r.incrby("n", 3) == 8
        await r.hset("h", mapping={"a": "1", "b": "2"})
        assert await r.hgetall("h") == {b"a": b"1", b"b": b"2"}
        assert await r.set("t", "v", ex=100) and 0 < await r.ttl("t") <= 100
        with pytest.raises(aioredis.ResponseError, match="WRONGTYPE"):
            await r.incr("h")
        with pytest.raises(aioredis.ResponseError, match="not available on a distributed namespace"):
            await r.flushall()
        # a pipeline of many commands comes back in order
        async with r.pipeline(transaction=False) as pipe:
            for i in range(50):
                pipe.set(f"p{i}", i)
                pipe.get(f"p{i}")
            replies = await pipe.execute()
        assert replies[1::2] == [str(i).encode() for i in range(50)]
        # SELECT inside one pipelined batch switches between the embedded and the distributed namespace
        async with r.pipeline(transaction=False) as pipe:
            for db, value in ((0, "embedded"), (3, "distributed"), (0, None), (3, None)):
                pipe.execute_command("SELECT", db)
                pipe.execute_command("GET", "mixed") if value is None else pipe.execute_command("SET", "mixed", value)
            replies = await pipe.execute()
        assert replies[5] == b"embedded" and replies[7] == b"distributed"
        # database 0 is still the embedded namespace
        r0 = aioredis.Redis(port=resp_port(node), password=node.token)
        assert await r0.set("local", "1") and await r0.get("local") == b"1"
        assert [await conn.get("local") for conn in direct.values()] == [None, None, None]
        await r0.aclose()
        # RESP3 clients get maps
        r3 = aioredis.Redis(port=resp_port(node), password=node.token, db=3, protocol=3)
        assert await r3.hgetall("h") == {b"a": b"1", b"b": b"2"}
        await r3.aclose()
    finally:
        await r.aclose()
        for conn in direct.values():
            await conn.aclose()


async def test_apply_is_live_and_delete_returns_the_database_to_the_engine(node: RunningNode,
                                                                          redis_servers: RedisServers) -> None:
    server = redis_servers.start()
    r = aioredis.Redis(port=resp_port(node), password=node.token, db=1)
    try:
        assert await r.set("k", "embedded")
        async with node.client() as client:
            await client.resources.apply(
                "apiVersion: mezzo.dev/v1\nkind: Cache\nmetadata: {name: db1}\n"
                f"spec: {{backend: redis, url: '{server.url}/2', defaultTTL: 30s}}\n")
            await routed(node, "db1", 1)
            assert await r.get("k") is None  # now Redis database 2 of that server
            assert await r.set("k", "remote")
            direct = aioredis.Redis(port=server.port, db=2)
            assert await direct.get("k") == b"remote"
            assert 0 < await direct.ttl("k") <= 30  # defaultTTL applies to writes without one
            await direct.aclose()
            await client.resources.delete("Cache", "db1")

            async def embedded_again() -> bool:
                return await r.get("k") == b"embedded"

            await wait_for(embedded_again, timeout=10)
    finally:
        await r.aclose()


async def test_embedded_cache_kind_sets_limits_and_bad_specs_name_the_field(node: RunningNode) -> None:
    async with node.client() as client:
        await client.resources.apply(
            "apiVersion: mezzo.dev/v1\nkind: Cache\nmetadata: {name: small}\n"
            "spec: {maxMemory: 64KiB, eviction: lfu, defaultTTL: 1h, nearCache: {enabled: true, maxKeys: 500}}\n")
        engine = node.node.service(Engine)

        def applied() -> bool:
            ks = engine.spaces.get("small")
            return ks is not None and ks.max_memory == 64 * 1024 and ks.policy == "lfu"

        await wait_for(applied, timeout=10)
        assert engine.spaces["small"].default_ttl_ms == 3_600_000
        stored = await client.resources.get("Cache", "small")
        near = CacheSpec.model_validate(stored.spec).near_cache  # how the SDK reads it, defaults filled in
        assert (near.enabled, near.max_keys, near.max_ttl) == (True, 500, 60.0)
        bad = [
            ("{backend: redis}", "spec.url", "required when backend is redis"),
            ("{backend: nodes, nodes: [{url: 'http://x:1'}]}", "spec.nodes.0.url", "redis://"),
            ("{backend: redis-cluster, urls: []}", "spec.urls", "seed"),
            ("{eviction: random}", "spec.eviction", "lru"),
            ("{database: 16}", "spec.database", "15"),
            ("{backend: nodes, nodes: [{url: 'redis://a:1'}, {url: 'redis://a:1'}]}", "spec.nodes", "same ring name"),
            ("{nearCache: {maxKeys: 0}}", "spec.nearCache.maxKeys", "greater than"),
        ]
        for spec, field, reason in bad:
            with pytest.raises(APIError) as info:
                await client.resources.apply(f"apiVersion: mezzo.dev/v1\nkind: Cache\nmetadata: {{name: x}}\nspec: {spec}\n")
            assert info.value.status == 400
            [error] = info.value.errors
            assert error["field"] == field and reason in error["reason"], (spec, error)


async def test_database_zero_can_be_bound_to_a_named_namespace(node: RunningNode) -> None:
    async with node.client() as client:
        await client.resources.apply("apiVersion: mezzo.dev/v1\nkind: Cache\nmetadata: {name: main}\nspec: {database: 0}\n")
    engine = node.node.service(Engine)
    await wait_for(lambda: node.node.service(CacheServer).router.by_db == {0: "main"}, timeout=10)
    r = aioredis.Redis(port=resp_port(node), password=node.token)  # a new connection, no SELECT
    try:
        assert await r.set("where", "main")
        assert engine.space("main").lookup(b"where") == b"main"
        assert b"where" not in engine.space("default").data
    finally:
        await r.aclose()
