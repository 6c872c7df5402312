"""The cache as a node runs it (issue 8): redis-cli and redis-benchmark against the Redis port, warm
restarts that never bring back old values, a damaged snapshot, and the two cache settings."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError

from mezzo.cache.engine import Engine
from mezzo.testing.fixtures import RunningNode, start_node


def port_of(node: RunningNode) -> int:
    return int(node.node.url("resp").rsplit(":", 1)[1])


async def tool(*args: str, stdin: bytes | None = None) -> tuple[int, str]:
    binary = shutil.which(args[0])
    if binary is None:
        pytest.fail(f"{args[0]} is not installed (it comes with redis-server)")
    process = await asyncio.create_subprocess_exec(binary, *args[1:], stdin=asyncio.subprocess.PIPE,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(stdin), 120)
    return process.returncode or 0, output.decode(errors="replace")


async def test_redis_cli_and_redis_benchmark_work_unchanged(node: RunningNode) -> None:
    port = str(port_of(node))
    cli = ("redis-cli", "-p", port, "-a", node.token, "--no-auth-warning")
    assert await tool(*cli, "set", "greeting", "hello") == (0, "OK\n")
    assert await tool(*cli, "get", "greeting") == (0, "hello\n")
    assert await tool(*cli, stdin=b"set n 1\nincr n\nhset h f v\nhgetall h\nttl n\nselect 3\ndbsize\n") == (
        0, "OK\n2\n1\nf\nv\n-1\nOK\n0\n")
    assert await tool(*cli, "-3", "hgetall", "h") == (0, "f v\n")  # RESP3 map
    assert await tool(*cli, "--scan", "--pattern", "gr*") == (0, "greeting\n")
    code, text = await tool(*cli, "--pipe", stdin=b"SET p1 1\r\nSET p2 2\r\n")
    assert code == 0 and "errors: 0, replies: 2" in text
    code, text = await tool(*cli, "info", "keyspace")
    assert code == 0 and "db0:keys=5" in text
    bench = ("redis-benchmark", "-p", port, "-a", node.token, "-t", "get,set", "-n", "2000", "-c", "4", "-q")
    for extra in ((), ("-P", "16"), ("-3", "--dbnum", "2")):
        code, text = await tool(*bench, *extra)
        assert code == 0 and "SET:" in text and "GET:" in text and "requests per second" in text, text
        assert "ERR" not in text and "rror" not in text, text
    r = aioredis.Redis(port=int(port), password=node.token)
    try:
        assert len(await r.get("key:__rand_int__") or b"") == 3  # what redis-benchmark wrote (-d 3)
    finally:
        await r.aclose()


async def test_a_restart_never_brings_back_values_overwritten_before_it(tmp_path: Path) -> None:
    """An expire time past 64 bits of milliseconds made the snapshot fail on shutdown, so the next start
    loaded the one before: overwritten values came back. Redis refuses such times."""
    data = tmp_path / "data"
    node = await start_node(data)
    r = aioredis.Redis(port=port_of(node), password=node.token)
    await r.set("a", "1")
    await r.aclose()
    await node.node.stop()
    node = await start_node(data)
    r = aioredis.Redis(port=port_of(node), password=node.token)
    try:
        await r.set("a", "2")
        for command in (("SET", "forever", "x", "EX", "9223372036854775807"), ("EXPIRE", "a", "9223372036854775807")):
            with pytest.raises(ResponseError, match="invalid expire time"):
                await r.execute_command(*command)
    finally:
        await r.aclose()
        await node.node.stop()
    node = await start_node(data)
    r = aioredis.Redis(port=port_of(node), password=node.token)
    try:
        assert await r.get("a") == b"2" and await r.ttl("a") == -1
    finally:
        await r.aclose()
        await node.node.stop()


async def test_a_damaged_snapshot_does_not_keep_the_node_from_starting(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    engine = Engine()
    for i in range(10):
        engine.space("default").store(b"k%d" % i, b"v%d" % i)
    engine.save(data / "cache.snapshot")
    whole = (data / "cache.snapshot").read_bytes()
    (data / "cache.snapshot").write_bytes(whole[:-4])  # the last entry cut
    node = await start_node(data)
    r = aioredis.Redis(port=port_of(node), password=node.token)
    try:
        assert await r.get("k0") == b"v0" and await r.dbsize() == 9
    finally:
        await r.aclose()
        await node.node.stop()


async def test_cache_auth_and_snapshot_settings(tmp_path: Path) -> None:
    """MEZZO_CACHE_AUTH=false lets clients in without AUTH; MEZZO_CACHE_SNAPSHOT=false neither saves nor loads."""
    data = tmp_path / "data"
    node = await start_node(data, cache_auth=False, cache_snapshot=False)
    anonymous = aioredis.Redis(port=port_of(node))
    try:
        assert await anonymous.set("open", "yes") and await anonymous.get("open") == b"yes"
    finally:
        await anonymous.aclose()
        await node.node.stop()
    assert not (data / "cache.snapshot").exists()
    node = await start_node(data)  # the defaults: AUTH required, snapshots on
    anonymous = aioredis.Redis(port=port_of(node), retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(AuthenticationError):
            await anonymous.get("open")
    finally:
        await anonymous.aclose()
    r = aioredis.Redis(port=port_of(node), password=node.token)
    try:
        assert await r.get("open") is None
        await r.set("saved", "1")
    finally:
        await r.aclose()
        await node.node.stop()
    assert (data / "cache.snapshot").exists()
    node = await start_node(data, cache_snapshot=False)
    r = aioredis.Redis(port=port_of(node), password=node.token)
    try:
        assert await r.get("saved") is None  # not loaded
    finally:
        await r.aclose()
        await node.node.stop()
