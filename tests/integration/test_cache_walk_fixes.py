"""Fixes from the docs walkthrough, against redis-server: ``COMMAND INFO``/``GETKEYS``/``LIST``
answer their arguments (nil for an unknown name, Redis' error texts), ``INFO <section>`` answers
that section, and on memcached nodes a counter Redis would refuse is refused with Redis' error and
left as it was (memcached's unsigned ``incr`` used to wrap 2**64-1 to a space-padded 0, or store
2**63+1 while answering the overflow error).

The keyless ``COMMAND``/``INFO`` go to the shared redis-server; the counter cases write there only
under this test's prefix. memcached is a process of this test's own, on a free port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from mezzo.testing.fixtures import RunningNode

from .cache_distributed.memcached_procs import MemcachedServers
from .cache_distributed.test_memcached import direct_get, manifest, resp_port, routed
from .test_cache_audit_redis_compat import answer, pair, raw, run_case  # noqa: F401
from .test_cache_sdk import cache  # noqa: F401  (the cache fixture: a node without snapshots)

Pair = tuple[aioredis.Redis, aioredis.Redis]


def _plain(reply: Any) -> Any:
    """A COMMAND row without its flags (Mezzo lists fewer) and Redis 7's extra fields (compared in
    ``test_cache_command_docs.py``): name, arity, first key, last key, step."""
    if not isinstance(reply, list):
        return reply
    return (bytes(reply[0]), reply[1], reply[3], reply[4], reply[5])


async def test_command_info_answers_the_names_asked_for(pair: Pair) -> None:  # noqa: F811
    real, mezzo = pair
    for names in (["get"], ["GET", "nosuch", "mset"], ["nosuch"], ["del", "hset", "object", "object|encoding"]):
        ours = await mezzo.execute_command("COMMAND", "INFO", *names)
        theirs = await real.execute_command("COMMAND", "INFO", *names)
        assert len(ours) == len(names), names
        assert [_plain(row) for row in ours] == [_plain(row) for row in theirs], names  # object|encoding too
    every = await mezzo.execute_command("COMMAND", "INFO")
    assert every == await mezzo.execute_command("COMMAND") and len(every) == await mezzo.execute_command("COMMAND", "COUNT")


GETKEYS_CASES = [
    ("GET", "k"), ("get", "k"), ("MSET", "a", "1", "b", "2"), ("MSET", "a", "1", "b"), ("DEL", "a", "b", "c"),
    ("EXISTS", "a"), ("MGET", "a", "b"), ("SET", "k", "v", "EX", "10", "GET"), ("GETEX", "k", "PERSIST"),
    ("HSET", "h", "f", "v"), ("HMGET", "h", "f", "g"), ("EXPIRE", "k", "10"), ("GETRANGE", "k", "0", "1"),
    ("OBJECT", "ENCODING", "k"), ("object", "freq", "k"),
    # refused: an unknown command or subcommand, no key arguments, a wrong count
    ("nosuch", "a"), ("OBJECT", "ENCODINGX", "k"), ("OBJECT", "HELP"), ("OBJECT", "ENCODING"), ("PING", "x"),
    ("SCAN", "0"), ("KEYS", "*"), ("SELECT", "1"), ("INFO", "x"), ("CONFIG", "GET", "x"), ("FLUSHDB", "ASYNC"),
    ("GET", "a", "b"), ("HSET", "h", "f"), ("MSET", "a"), ("GETRANGE", "k", "0"),
]


async def test_command_getkeys_answers_as_redis_server(pair: Pair) -> None:  # noqa: F811
    real, mezzo = pair
    differences = []
    for case in [*GETKEYS_CASES, ()]:  # and COMMAND GETKEYS with nothing after it
        args = ("COMMAND", "GETKEYS", *case)
        ours, theirs = await answer(mezzo, args), await answer(real, args)
        if ours != theirs:
            differences.append(f"{args}: redis-server {theirs!r}, mezzo {ours!r}")
    assert not differences, "\n".join(differences)
    assert await answer(mezzo, ("COMMAND", "GETKEYS", "GET")) == await answer(real, ("COMMAND", "GETKEYS", "GET"))


async def test_command_list_count_and_errors_as_redis_server(pair: Pair) -> None:  # noqa: F811
    real, mezzo = pair
    ours = set(await mezzo.execute_command("COMMAND", "LIST"))  # subcommands too, as Redis lists them
    assert len({n for n in ours if b"|" not in n}) == await mezzo.execute_command("COMMAND", "COUNT")
    assert ours - set(await real.execute_command("COMMAND", "LIST")) == {b"client|setinfo"}  # Redis 7.2's
    filters = [("ACLCAT", category) for category in ("read", "write", "keyspace", "string", "hash", "fast", "slow",
                                                      "connection", "dangerous", "admin", "Connection", "bogus")]
    filters += [("PATTERN", "h*"), ("PATTERN", "H*ET"), ("PATTERN", "*expire*"), ("PATTERN", "[gs]et"),
                ("MODULE", "x")]
    for kind, arg in filters:
        args = ("COMMAND", "LIST", "FILTERBY", kind, arg)
        theirs = set(await real.execute_command(*args)) & ours
        assert set(await mezzo.execute_command(*args)) - {b"client|setinfo"} == theirs, args
    for args in [("COMMAND", "BOGUS"), ("COMMAND", "COUNT", "x"), ("COMMAND", "LIST", "bogus"),
                 ("COMMAND", "LIST", "FILTERBY"), ("COMMAND", "LIST", "FILTERBY", "PATTERN"),
                 ("COMMAND", "LIST", "FILTERBY", "ACL", "x"), ("COMMAND", "LIST", "FILTERBY", "PATTERN", "a", "b"),
                 ("COMMAND", "HELP", "x"), ("COMMAND", "INFO")]:
        ours_answer, theirs_answer = await answer(mezzo, args), await answer(real, args)
        if args[1] == "INFO":  # all commands: not the same table
            assert isinstance(ours_answer, list) and isinstance(theirs_answer, list)
        else:
            assert ours_answer == theirs_answer, args
    assert (await mezzo.execute_command("COMMAND", "HELP"))[0] == (await real.execute_command("COMMAND", "HELP"))[0]


def sections(text: bytes) -> list[bytes]:
    return [line for line in text.split(b"\r\n") if line.startswith(b"# ")]


async def test_info_answers_the_sections_asked_for(pair: Pair, redis_prefix: str) -> None:  # noqa: F811
    real, mezzo = pair
    await mezzo.set("k", "v")
    assert sections(await mezzo.execute_command("INFO")) == [b"# Server", b"# Clients", b"# Memory", b"# Stats",
                                                             b"# Keyspace"]
    for args in [("keyspace",), ("KEYSPACE",), ("Keyspace", "server"), ("clients", "memory", "clients"),
                 ("stats", "nosuch"), ("nosuch",), ("server", "keyspace", "memory", "stats", "clients")]:
        ours, theirs = await mezzo.execute_command("INFO", *args), await real.execute_command("INFO", *args)
        assert sections(ours) == sections(theirs), args  # the same sections, in Redis' order
        assert (ours == b"") == (theirs == b""), args
        assert ours.endswith(b"\r\n") or ours == b""
    for word in ("all", "everything", "default", "DEFAULT"):
        ours = sections(await mezzo.execute_command("INFO", word))
        assert ours == sections(await mezzo.execute_command("INFO"))
        assert set(ours) <= set(sections(await real.execute_command("INFO", word)))
    keyspace = await mezzo.execute_command("INFO", "keyspace")
    assert keyspace == b"# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n"
    kwargs = mezzo.connection_pool.connection_kwargs
    parsing = aioredis.Redis(port=kwargs["port"], password=kwargs["password"])  # redis-py's own reading of it
    try:
        assert await parsing.info("keyspace") == {"db0": {"keys": 1, "expires": 0, "avg_ttl": 0}}
    finally:
        await parsing.aclose()


# --- counters on memcached nodes ---------------------------------------------------------------

COUNTER_CASES = [
    [("SET", "{p}x", "18446744073709551615"), ("INCR", "{p}x"), ("GET", "{p}x"), ("INCRBY", "{p}x", "5"),
     ("DECR", "{p}x"), ("GET", "{p}x")],
    [("SET", "{p}x", "9223372036854775808"), ("INCR", "{p}x"), ("GET", "{p}x")],
    [("SET", "{p}x", "9223372036854775807"), ("INCR", "{p}x"), ("GET", "{p}x"), ("INCRBY", "{p}x", "0"),
     ("DECR", "{p}x"), ("GET", "{p}x")],
    [("SET", "{p}x", "9223372036854775800"), ("INCRBY", "{p}x", "8"), ("GET", "{p}x"), ("INCRBY", "{p}x", "7"),
     ("GET", "{p}x"), ("DECRBY", "{p}x", "-1"), ("GET", "{p}x")],
    [("SET", "{p}x", "-9223372036854775808"), ("DECR", "{p}x"), ("INCRBY", "{p}x", "-1"), ("GET", "{p}x"),
     ("INCR", "{p}x"), ("GET", "{p}x")],
    [("SET", "{p}x", "007"), ("INCR", "{p}x"), ("GET", "{p}x")],
    [("SET", "{p}x", " 7"), ("INCR", "{p}x"), ("GET", "{p}x")],
    [("SET", "{p}x", "7 "), ("INCR", "{p}x"), ("GET", "{p}x")],
    [("SET", "{p}x", "7 abc"), ("INCRBY", "{p}x", "3"), ("GET", "{p}x")],
    [("SET", "{p}x", "+7"), ("INCR", "{p}x"), ("GET", "{p}x")],
    [("SET", "{p}x", "-0"), ("INCR", "{p}x"), ("GET", "{p}x")],
    [("SET", "{p}x", "99"), ("INCR", "{p}x"), ("GET", "{p}x"), ("INCRBY", "{p}x", "-0"), ("INCRBY", "{p}x", "01")],
    [("SET", "{p}x", "-5"), ("INCR", "{p}x"), ("INCRBY", "{p}x", "10"), ("GET", "{p}x"), ("DECRBY", "{p}x", "7"),
     ("GET", "{p}x")],
    [("INCR", "{p}new"), ("INCRBY", "{p}new2", "5"), ("DECR", "{p}new3"), ("GET", "{p}new")],
]


@pytest.fixture
async def memcached_proxy(node: RunningNode, tmp_path: Path) -> AsyncIterator[tuple[aioredis.Redis, Any]]:
    workdir = tmp_path / "memcached"
    workdir.mkdir()
    servers = MemcachedServers(workdir)
    try:
        server = servers.start()
        async with node.client() as client:
            await client.resources.apply(manifest("walk", [server], database=6))
        await routed(node, "walk", 1)
        proxy = raw(aioredis.Redis(port=resp_port(node), password=node.token, db=6))
        try:
            yield proxy, server
        finally:
            await proxy.aclose()
    finally:
        servers.stop_all()


async def test_memcached_counters_refuse_and_keep_what_redis_refuses(
        memcached_proxy: tuple[aioredis.Redis, Any], redis_url: str, redis_prefix: str) -> None:
    proxy, server = memcached_proxy
    real = raw(aioredis.Redis.from_url(redis_url))
    differences = []
    try:
        for i, case in enumerate(COUNTER_CASES):
            ours = await run_case(proxy, f"c{i}:", case)
            theirs = await run_case(real, f"{redis_prefix}c{i}:", case)
            if ours != theirs:
                differences.append(f"{case}:\n  redis-server {theirs}\n  mezzo        {ours}")
    finally:
        await real.aclose()
    assert not differences, "\n".join(differences)
    # what memcached itself holds is the value as it was set: no wrapped, padded or unsigned result
    assert direct_get(server, b"c0:x") == b"18446744073709551615"
    assert direct_get(server, b"c1:x") == b"9223372036854775808"
    assert direct_get(server, b"c5:x") == b"007"


async def test_memcached_increments_keep_the_ttl_and_count_every_one_under_contention(
        memcached_proxy: tuple[aioredis.Redis, Any]) -> None:
    proxy, _ = memcached_proxy
    assert await proxy.execute_command("SET", "ttl", "5", "EX", "100") == b"OK"
    assert await proxy.execute_command("INCR", "ttl") == 6 and 99 <= await proxy.execute_command("TTL", "ttl") <= 100
    # one pipeline: increments of one key answer in order, the GET after them sees them all
    pipe = proxy.pipeline(transaction=False)
    for i in range(30):
        pipe.execute_command("INCR", "hits")
        pipe.execute_command("INCRBY", f"other:{i % 3}", "2")
    pipe.execute_command("GET", "hits")
    answers = await pipe.execute()
    assert answers[0:60:2] == list(range(1, 31)) and answers[-1] == b"30"
    assert sorted(answers[1:60:2]) == sorted([2 * n for n in range(1, 11)] * 3)
    # several connections at once: CAS retries, nothing lost
    kwargs = proxy.connection_pool.connection_kwargs
    clients = [aioredis.Redis(port=kwargs["port"], password=kwargs["password"], db=6) for _ in range(4)]
    try:
        async def bump(client: aioredis.Redis) -> None:
            for _ in range(25):
                await client.execute_command("INCR", "shared")

        await asyncio.gather(*(bump(c) for c in clients))
    finally:
        for c in clients:
            await c.aclose()
    assert await proxy.execute_command("GET", "shared") == b"100"
