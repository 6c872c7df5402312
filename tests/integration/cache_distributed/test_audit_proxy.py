"""The Redis port in front of a distributed namespace answers what the Redis node behind it answers
(issue 8: "the Redis-protocol endpoint fronts the distributed mode too"), and the CLI shows its nodes."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from mezzo.testing.fixtures import RunningNode

from ..test_cache_audit_redis_compat import (
    EXPIRY_CASES,
    INTEGER_CASES,
    PROTOCOL_CASES,
    compare,
    raw,
)
from ..test_cache_cli import mezzo as mezzo_cli
from .memcached_procs import MemcachedServers
from .redis_procs import RedisServers
from .test_proxy_nodes import manifest, resp_port, routed


async def declare(node: RunningNode, name: str, urls: list[str], database: int | None = None) -> None:
    """A ``nodes`` namespace over ``urls``, live on the node when this returns."""
    async with node.client() as client:
        await client.resources.apply(manifest(name, urls, database=database))
    await routed(node, name, len(urls))


async def test_the_proxy_answers_as_the_redis_node_behind_it(node: RunningNode, redis_servers: RedisServers) -> None:
    """Every case of the embedded comparison, through the proxy (database 2 of a Redis of our own) and
    straight to that Redis (database 1): MGET over a hash is nil for it, not an error; PSETEX is proxied."""
    server = redis_servers.start()
    await declare(node, "proxied", [f"{server.url}/2"], 4)
    direct = raw(aioredis.Redis(port=server.port, db=1))
    proxy = raw(aioredis.Redis(port=resp_port(node), password=node.token, db=4))
    try:
        await compare((direct, proxy), "audit:", INTEGER_CASES + EXPIRY_CASES + PROTOCOL_CASES)
        behind = aioredis.Redis(port=server.port, db=2)
        await proxy.execute_command("PSETEX", "p", "60000", "v")
        assert 0 < await behind.pttl("p") <= 60_000  # really on the node
        await behind.aclose()
    finally:
        await direct.aclose()
        await proxy.aclose()


async def test_mget_over_nodes_answers_nil_for_a_key_of_another_type(node: RunningNode,
                                                                    redis_servers: RedisServers) -> None:
    await declare(node, "ring", [redis_servers.start().url for _ in range(2)], 5)
    r = aioredis.Redis(port=resp_port(node), password=node.token, db=5)
    try:
        await r.mset({f"s{i}": str(i) for i in range(20)})
        await r.hset("h", mapping={"f": "v"})
        assert await r.mget(["s0", "h", "s7", "missing"]) == [b"0", None, b"7", None]
        async with r.pipeline(transaction=False) as pipe:
            pipe.mget(["h", "s3"])
            pipe.get("s4")
            assert await pipe.execute() == [[None, b"3"], b"4"]
    finally:
        await r.aclose()


async def test_cli_nodes_and_rebalance_of_a_distributed_namespace(node: RunningNode,
                                                                  redis_servers: RedisServers) -> None:
    servers = [redis_servers.start() for _ in range(2)]
    await declare(node, "shown", [s.url for s in servers])
    code, text = await mezzo_cli(node, "nodes", "-n", "shown")
    assert code == 0 and "backend nodes (redis)" in text, text
    for server in servers:
        assert f"127.0.0.1:{server.port}" in text and "healthy" in text
    code, text = await mezzo_cli(node, "rebalance", "-n", "shown")
    assert code == 0 and "reason=requested" in text, text


async def test_commands_not_proxied_answer_an_error_naming_them(node: RunningNode, redis_servers: RedisServers) -> None:
    await declare(node, "refusing", [redis_servers.start().url], 6)
    r = aioredis.Redis(port=resp_port(node), password=node.token, db=6)
    try:
        for command in (("FLUSHALL",), ("LPUSH", "l", "x"), ("EVAL", "return 1", "0"), ("SUBSCRIBE", "c")):
            with pytest.raises(aioredis.ResponseError, match=f"'{command[0]}' is not available on a distributed"):
                await r.execute_command(*command)
            assert await r.ping()  # the connection carries on
    finally:
        await r.aclose()


async def test_psetex_reaches_memcached_nodes_as_the_docs_table_says(node: RunningNode,
                                                                    memcached_servers: MemcachedServers) -> None:
    await declare(node, "mcp", [memcached_servers.start().url for _ in range(2)], 8)
    r = aioredis.Redis(port=resp_port(node), password=node.token, db=8)
    try:
        assert await r.psetex("session", 60_000, "v") and await r.get("session") == b"v"
        assert 0 < await r.pttl("session") <= 60_000
    finally:
        await r.aclose()
