"""The embedded cache over the Redis protocol, driven by redis-py (RESP2 and RESP3)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mezzo.cache.engine import Engine, Keyspace
from mezzo.testing.fixtures import RunningNode, start_node, wait_for


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[RunningNode]:
    running = await start_node(tmp_path / "data")
    try:
        yield running
    finally:
        await running.node.stop()


def port_of(node: RunningNode) -> int:
    return int(node.node.url("resp").rsplit(":", 1)[1])


async def connect(node: RunningNode, protocol: int = 2) -> aioredis.Redis:
    return aioredis.Redis(host="127.0.0.1", port=port_of(node), password=node.token, protocol=protocol)


async def test_strings_ttl_and_counters(cache: RunningNode) -> None:
    r = await connect(cache)
    try:
        assert await r.ping()
        assert await r.set("a", "1") and await r.get("a") == b"1"
        assert await r.set("a", "2", nx=True) is None and await r.get("a") == b"1"
        assert await r.set("b", "x", xx=True) is None and await r.get("b") is None
        assert await r.set("a", "3", get=True) == b"1"
        await r.set("t", "v", px=50_000)
        assert 0 < await r.pttl("t") <= 50_000 and await r.ttl("a") == -1 and await r.ttl("nope") == -2
        await r.set("t", "w", keepttl=True)
        assert await r.pttl("t") > 0
        assert await r.persist("t") and await r.ttl("t") == -1
        assert await r.expire("t", 100) and await r.ttl("t") in (99, 100)
        await r.set("gone", "soon", px=1)

        async def expired() -> bool:
            return await r.exists("gone") == 0

        await wait_for(expired, timeout=5)
        assert await r.incr("n") == 1 and await r.incrby("n", 10) == 11 and await r.decr("n") == 10
        assert await r.incrbyfloat("f", 1.5) == 1.5
        await r.set("a", "x")
        with pytest.raises(aioredis.ResponseError, match="not an integer"):
            await r.incr("a")
        assert await r.append("s", "ab") == 2 and await r.append("s", "c") == 3 and await r.get("s") == b"abc"
        assert await r.mset({"m1": "1", "m2": "2"}) and await r.mget("m1", "m2", "m3") == [b"1", b"2", None]
        assert await r.getdel("m1") == b"1" and await r.exists("m1") == 0
        assert await r.getex("m2", ex=100) == b"2" and await r.ttl("m2") > 0
        assert await r.setnx("m2", "z") is False
        assert await r.delete("m2", "s", "missing") == 2 and await r.unlink("n") == 1
    finally:
        await r.aclose()


async def test_hashes_keys_and_types(cache: RunningNode) -> None:
    r = await connect(cache, protocol=3)
    try:
        assert await r.hset("h", mapping={"a": "1", "b": "2"}) == 2
        assert await r.hget("h", "a") == b"1" and await r.hmget("h", ["a", "z"]) == [b"1", None]
        assert await r.hgetall("h") == {b"a": b"1", b"b": b"2"}  # a RESP3 map
        assert await r.hincrby("h", "a", 5) == 6 and await r.hexists("h", "b") and await r.hlen("h") == 2
        assert await r.hdel("h", "b", "zz") == 1
        await r.set("s", "v")
        with pytest.raises(aioredis.ResponseError, match="WRONGTYPE"):
            await r.hget("s", "a")
        assert (await r.type("h"), await r.type("s"), await r.type("x")) == (b"hash", b"string", b"none")
        for i in range(30):
            await r.set(f"user:{i}", i)
        found = [k async for k in r.scan_iter(match="user:*", count=7)]
        assert sorted(found) == sorted(f"user:{i}".encode() for i in range(30))
        assert len(await r.keys("user:1*")) == 11
        assert await r.dbsize() == 32
        await r.select(1)
        assert await r.dbsize() == 0  # another database is another namespace
        await r.set("k", "db1")
        await r.select(0)
        assert await r.get("k") is None
        assert await r.flushdb() and await r.dbsize() == 0
        assert await r.client_setname("worker-1") and await r.client_getname() == b"worker-1"
        assert isinstance(await r.client_id(), int)
        info = await r.info()
        assert info["redis_version"] == "7.0.0" and "keyspace_hits" in info
        assert await r.echo("hi") == b"hi"
    finally:
        await r.aclose()


async def test_auth_unknown_commands_and_pipelines(cache: RunningNode) -> None:
    anonymous = aioredis.Redis(host="127.0.0.1", port=port_of(cache))
    try:
        with pytest.raises(aioredis.AuthenticationError):
            await anonymous.get("a")
    finally:
        await anonymous.aclose()
    wrong = aioredis.Redis(host="127.0.0.1", port=port_of(cache), password="mzo_nope_nope")
    try:
        with pytest.raises(aioredis.AuthenticationError):
            await wrong.ping()
    finally:
        await wrong.aclose()
    r = await connect(cache)
    try:
        with pytest.raises(aioredis.ResponseError, match="unknown command"):
            await r.execute_command("FROBNICATE", "x")
        with pytest.raises(aioredis.ResponseError, match="wrong number of arguments"):
            await r.execute_command("GET")
        async with r.pipeline(transaction=False) as pipe:
            for i in range(100):
                pipe.set(f"p{i}", i)
                pipe.get(f"p{i}")
            results = await pipe.execute()
        assert results[1::2] == [str(i).encode() for i in range(100)]
    finally:
        await r.aclose()


async def test_protocol_garbage_never_hurts_other_connections(cache: RunningNode) -> None:
    good = await connect(cache)
    try:
        await good.set("safe", "1")
        for garbage in (b"*2\r\n$3\r\nGET\r\n$-5\r\n", b"*x\r\n", b"*1\r\n:3\r\n", b"\x00\xff" * 100 + b"\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(cache))
            writer.write(garbage)
            await writer.drain()
            await asyncio.wait_for(reader.read(1000), 5)
            writer.close()
        assert await good.get("safe") == b"1"
    finally:
        await good.aclose()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_fuzzed_frames_are_answered_or_refused(data: bytes) -> None:
    """Any bytes: the parser either waits for more, answers, or refuses with a protocol error."""
    from mezzo.cache.resp import RespConnection
    from mezzo.cache.server import CacheServer
    from mezzo.testing.transport import FakeTransport

    server = CacheServer(Engine(), None, require_auth=False)
    conn = RespConnection(server)

    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(data)
    assert not transport.out or transport.out[:1] in b"+-:$*%_,"


def test_eviction_and_snapshot(tmp_path: Path) -> None:
    ks = Keyspace("x", max_memory=10_000, policy="lru")
    for i in range(200):
        ks.store(f"k{i}".encode(), b"v" * 100)
    assert ks.memory <= 10_000 and ks.evictions > 0 and ks.lookup(b"k199") is not None and ks.lookup(b"k0") is None
    engine = Engine()
    engine.space("default").store(b"a", b"1")
    engine.space("default").store(b"h", {b"f": b"v"}, ttl_ms=60_000)
    engine.space("db2").store(b"gone", b"x", ttl_ms=1)
    assert engine.save(tmp_path / "snap") >= 2
    again = Engine()
    assert again.load(tmp_path / "snap") >= 2
    assert again.space("default").lookup(b"h") == {b"f": b"v"} and again.space("default").ttl_ms(b"h") > 0


async def test_restart_comes_back_warm(tmp_path: Path) -> None:
    node = await start_node(tmp_path / "data")
    r = await connect(node)
    await r.set("warm", "yes")
    await r.aclose()
    await node.node.stop()
    again = await start_node(tmp_path / "data")
    try:
        r = await connect(again)
        assert await r.get("warm") == b"yes"
        await r.aclose()
    finally:
        await again.node.stop()


def test_port_is_free_of_standard_redis(cache: RunningNode) -> None:
    assert port_of(cache) != 6379
    with socket.create_connection(("127.0.0.1", port_of(cache))):
        pass


async def test_http_api_sdk_and_single_flight(cache: RunningNode) -> None:
    async with cache.client() as client:
        assert await client.cache.set("greeting", "hello", ttl="1m")
        assert await client.cache.get("greeting") == b"hello"
        assert await client.cache.set("greeting", "again", nx=True) is False
        assert await client.cache.set("blob", b"\x00\xff")
        assert await client.cache.get("blob") == b"\x00\xff"
        assert sorted(await client.cache.keys("g*")) == ["greeting"]
        calls = 0

        async def loader() -> str:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.05)  # a slow source, so the callers below overlap
            return "computed"

        results = await asyncio.gather(*(client.cache.get_or_set("expensive", loader, ttl=60) for _ in range(20)))
        assert results == [b"computed"] * 20 and calls == 1  # loaded once for twenty callers
        stats = await client.cache.stats()
        assert stats["keys"] >= 3 and stats["hits"] >= 1 and 0 <= stats["hitRatio"] <= 1
        assert await client.cache.delete("greeting") and not await client.cache.delete("greeting")
        r = await client._http.put("/v1/cache/default/keys/x", json={"value": "a", "valueBase64": "YQ=="})
        assert r.status_code == 400
        metrics = (await client._http.get("/metrics")).text
        assert 'mezzo_cache_keys{namespace="default"}' in metrics
    r = await connect(cache)  # the same data over the Redis protocol
    try:
        assert await r.get("expensive") == b"computed"
    finally:
        await r.aclose()
