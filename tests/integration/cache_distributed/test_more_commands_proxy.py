"""EXPIREAT, PEXPIREAT, EXPIRETIME, PEXPIRETIME, GETRANGE, SUBSTR, SETRANGE, HINCRBYFLOAT and OBJECT
through the proxy: the answers of the Redis node behind it, each command sent to the node owning its
key (OBJECT's key is its third argument), OBJECT HELP and malformed OBJECTs answered by the proxy,
and memcached nodes refusing what they cannot serve."""

from __future__ import annotations

import httpx
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from mezzo.cache.distributed.ring import KetamaRing
from mezzo.testing.fixtures import RunningNode, wait_for

from ..test_cache_audit_redis_compat import compare, raw
from ..test_cache_more_commands import ALL_CASES, LATER
from .memcached_procs import MemcachedServers
from .redis_procs import RedisServers
from .test_audit_proxy import declare
from .test_proxy_nodes import resp_port


async def test_the_proxy_answers_the_new_commands_as_the_redis_node_behind_it(node: RunningNode,
                                                                              redis_servers: RedisServers) -> None:
    server = redis_servers.start()
    await declare(node, "more", [f"{server.url}/2"], 4)
    direct = raw(aioredis.Redis(port=server.port, db=1))
    proxy = raw(aioredis.Redis(port=resp_port(node), password=node.token, db=4))
    try:
        await compare((direct, proxy), "more:", ALL_CASES)
        lines = await proxy.execute_command("OBJECT", "HELP")  # answered by the proxy itself
        assert lines[0].startswith(b"OBJECT <subcommand>") and b"ENCODING <key>" in lines
    finally:
        await direct.aclose()
        await proxy.aclose()


async def test_each_new_command_reaches_the_node_owning_its_key(node: RunningNode, redis_servers: RedisServers) -> None:
    servers = [redis_servers.start() for _ in range(3)]
    await declare(node, "spread", [s.url for s in servers], 5)
    ring = KetamaRing((f"127.0.0.1:{s.port}", 1) for s in servers)
    direct = {f"127.0.0.1:{s.port}": aioredis.Redis(port=s.port) for s in servers}
    r = aioredis.Redis(port=resp_port(node), password=node.token, db=5)
    try:
        keys = [f"item:{i}" for i in range(30)]
        for i, key in enumerate(keys):
            assert await r.setrange(key, 2, "ab") == 4
            assert await r.getrange(key, 2, -1) == b"ab"
            assert await r.expireat(key, int(LATER)) and await r.expiretime(key) == int(LATER)
            assert await r.pexpiretime(key) == int(LATER) * 1000
            assert await r.hincrbyfloat(f"h:{key}", "f", 0.5 * i) == 0.5 * i
            assert await r.pexpireat(f"h:{key}", int(LATER) * 1000 + i)
        for key in keys:  # a command routed by the wrong argument would find no key (nil)
            assert await r.object("encoding", key) == b"raw"  # SETRANGE leaves raw strings in Redis
            assert await r.object("encoding", f"h:{key}") == b"listpack"
            assert await r.object("refcount", key) == 1
            owner = direct[ring.node_for(key.encode())]
            assert await owner.get(key) == b"\0\0ab" and await owner.expiretime(key) == int(LATER)
        assert len({ring.node_for(k.encode()) for k in keys}) == 3
    finally:
        await r.aclose()
        for conn in direct.values():
            await conn.aclose()


async def test_memcached_nodes_refuse_the_new_commands_by_name(node: RunningNode,
                                                               memcached_servers: MemcachedServers) -> None:
    await declare(node, "mcmore", [memcached_servers.start().url], 8)
    r = aioredis.Redis(port=resp_port(node), password=node.token, db=8)
    try:
        assert await r.set("k", "v")
        for command in (("EXPIREAT", "k", LATER), ("GETRANGE", "k", "0", "1"), ("HINCRBYFLOAT", "h", "f", "1"),
                        ("OBJECT", "ENCODING", "k")):
            with pytest.raises(aioredis.ResponseError, match=f"'{command[0]}' is not supported on memcached nodes"):
                await r.execute_command(*command)
        assert (await r.execute_command("OBJECT", "HELP"))[0].startswith(b"OBJECT <subcommand>")
        assert await r.get("k") == b"v"
    finally:
        await r.aclose()


async def test_redis_cluster_gets_the_new_commands_by_key_slot(node: RunningNode, redis_servers: RedisServers) -> None:
    members = redis_servers.cluster(3)
    urls = ", ".join(f"'{m.url}'" for m in members)
    async with node.client() as client:
        await client.resources.apply("apiVersion: mezzo.dev/v1\nkind: Cache\nmetadata: {name: slots}\n"
                                     f"spec: {{backend: redis-cluster, urls: [{urls}], database: 6}}\n")
    r = raw(aioredis.Redis(port=resp_port(node), password=node.token, db=6))
    direct = RedisCluster(host="127.0.0.1", port=members[0].port)
    try:
        async def ready() -> bool:
            # routed to the cluster: a SET that answers OK may still have gone to the embedded cache (it
            # did once in CI: all 41 keys landed there, and the direct read below found nothing)
            async with httpx.AsyncClient(base_url=node.url, headers={"authorization": f"Bearer {node.token}"}) as http:
                response = await http.get("/v1/cache/slots/nodes")
            return response.status_code == 200 and response.json()["backend"] == "redis-cluster"

        await wait_for(ready, timeout=10)
        for i in range(20):  # spread over the slots of all three primaries
            key = f"c:{i}"
            assert await r.execute_command("HINCRBYFLOAT", key, "f", "1.5") == b"1.5"
            assert await r.execute_command("HINCRBYFLOAT", key, "f", "1.5") == b"3"  # the node's text, not 3.0
            assert await r.execute_command("OBJECT", "ENCODING", key) == b"listpack"
            assert await r.execute_command("SETRANGE", f"s:{i}", "1", "x") == 2
            assert await r.execute_command("GETRANGE", f"s:{i}", "0", "-1") == b"\0x"
            assert await r.execute_command("PEXPIREAT", f"s:{i}", str(int(LATER) * 1000)) == 1
            assert await r.execute_command("EXPIRETIME", f"s:{i}") == int(LATER)
        assert await direct.getrange("s:7", 0, -1) == b"\0x"  # really in the cluster
    finally:
        await r.aclose()
        await direct.aclose()
