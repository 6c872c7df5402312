"""EXPIREAT, PEXPIREAT, EXPIRETIME, PEXPIRETIME, GETRANGE, SUBSTR, SETRANGE, HINCRBYFLOAT and OBJECT
answer what redis-server answers: each case runs against the shared redis-server (keys under this
test's prefix, deleted after each case) and against a Mezzo node, replies compared as they came off
the wire (RESP2 and RESP3), error lines byte for byte.

Deadlines are absolute and far off (year 2096), so EXPIRETIME's answers do not depend on when the
case runs. ``OBJECT`` is compared where Mezzo answers as Redis does; where it cannot (IDLETIME, the
REFCOUNT of Redis' shared integers, LFU counters) ``tests/unit/cache/test_more_commands.py`` checks
the documented answers.
"""

from __future__ import annotations

import random

import redis.asyncio as aioredis

from mezzo.testing.fixtures import RunningNode

from .test_cache_audit_redis_compat import _error_lines, compare, pair, raw  # noqa: F401
from .test_cache_sdk import cache  # noqa: F401  (the cache fixture: a node without snapshots)

LATER = "4000000000"  # seconds since the epoch: in 2096
LATER_MS = "4000000000123"

EXPIRE_AT_CASES = [
    [("SET", "{p}k", "v"), ("EXPIREAT", "{p}k", LATER), ("EXPIRETIME", "{p}k"), ("PEXPIRETIME", "{p}k"), ("TTL", "{p}k")],
    [("SET", "{p}k", "v"), ("PEXPIREAT", "{p}k", LATER_MS), ("PEXPIRETIME", "{p}k"), ("EXPIRETIME", "{p}k"),
     ("PTTL", "{p}k")],
    [("SET", "{p}k", "v"), ("PEXPIREAT", "{p}k", "4000000000500"), ("EXPIRETIME", "{p}k"),
     ("PEXPIREAT", "{p}k", "4000000000499"), ("EXPIRETIME", "{p}k")],
    [("SET", "{p}k", "v"), ("EXPIREAT", "{p}k", "1"), ("EXISTS", "{p}k")],
    [("SET", "{p}k", "v"), ("EXPIREAT", "{p}k", "0"), ("EXISTS", "{p}k")],
    [("SET", "{p}k", "v"), ("EXPIREAT", "{p}k", "-1"), ("EXISTS", "{p}k")],
    [("SET", "{p}k", "v"), ("PEXPIREAT", "{p}k", "1000"), ("GET", "{p}k")],
    [("EXPIREAT", "{p}missing", LATER), ("PEXPIREAT", "{p}missing", "1"), ("EXISTS", "{p}missing")],
    [("SET", "{p}k", "v"), ("EXPIREAT", "{p}k", "9223372036854776")],
    [("SET", "{p}k", "v"), ("EXPIREAT", "{p}k", "-9223372036854776")],
    [("SET", "{p}k", "v"), ("EXPIREAT", "{p}k", "9223372036854775"), ("EXPIRETIME", "{p}k")],
    [("SET", "{p}k", "v"), ("PEXPIREAT", "{p}k", "9223372036854775807"), ("PEXPIRETIME", "{p}k"), ("EXPIRETIME", "{p}k")],
    [("SET", "{p}k", "v"), ("PEXPIREAT", "{p}k", "-9223372036854775808"), ("EXISTS", "{p}k")],
    [("SET", "{p}k", "v"), ("PEXPIREAT", "{p}k", "9223372036854775808")],
    [("SET", "{p}k", "v"), ("EXPIREAT", "{p}k", "x")],
    [("SET", "{p}k", "v"), ("EXPIREAT", "{p}k", LATER, "XX"), ("EXPIRETIME", "{p}k"), ("EXPIREAT", "{p}k", LATER, "nx"),
     ("EXPIRETIME", "{p}k"), ("EXPIREAT", "{p}k", "4100000000", "NX"), ("EXPIREAT", "{p}k", "4100000000", "GT"),
     ("EXPIRETIME", "{p}k"), ("EXPIREAT", "{p}k", "4050000000", "GT"), ("EXPIREAT", "{p}k", "4050000000", "LT"),
     ("EXPIRETIME", "{p}k"), ("EXPIREAT", "{p}k", "4060000000", "lt"), ("EXPIREAT", "{p}k", "4050000000", "XX"),
     ("EXPIRETIME", "{p}k")],
    [("SET", "{p}k", "v"), ("PEXPIREAT", "{p}k", LATER_MS, "GT"), ("PEXPIRETIME", "{p}k"),
     ("PEXPIREAT", "{p}k", LATER_MS, "LT"), ("PEXPIRETIME", "{p}k")],
    [("SET", "{p}k", "v"), ("EXPIREAT", "{p}k", LATER, "NX", "XX")],
    [("SET", "{p}k", "v"), ("PEXPIREAT", "{p}k", LATER, "GT", "LT")],
    [("SET", "{p}k", "v"), ("EXPIREAT", "{p}k", LATER, "BOGUS")],
    [("SET", "{p}k", "v"), ("EXPIREAT", "{p}k", "x", "BOGUS")],
    [("EXPIREAT", "{p}missing", LATER, "XX")],
    [("SET", "{p}k", "v", "EX", "100"), ("EXPIREAT", "{p}k", "1", "GT"), ("EXISTS", "{p}k")],
    [("SET", "{p}k", "v", "EX", "100"), ("EXPIREAT", "{p}k", "1", "LT"), ("EXISTS", "{p}k")],
    [("SET", "{p}k", "v"), ("EXPIRETIME", "{p}k"), ("PEXPIRETIME", "{p}k"), ("EXPIRETIME", "{p}missing"),
     ("PEXPIRETIME", "{p}missing")],
    [("HSET", "{p}h", "f", "v"), ("EXPIREAT", "{p}h", LATER), ("EXPIRETIME", "{p}h")],
    [("SET", "{p}k", "v", "EXAT", LATER), ("PEXPIRETIME", "{p}k")],
    [("SET", "{p}k", "v", "PXAT", LATER_MS), ("PEXPIRETIME", "{p}k"), ("GETEX", "{p}k", "PXAT", "4000000000999"),
     ("PEXPIRETIME", "{p}k"), ("GETEX", "{p}k", "EXAT", LATER), ("PEXPIRETIME", "{p}k")],
    [("SET", "{p}k", "v"), ("EXPIREAT", "{p}k", LATER), ("PERSIST", "{p}k"), ("EXPIRETIME", "{p}k")],
    [("SET", "{p}k", "v"), ("EXPIREAT", "{p}k", LATER), ("SET", "{p}k", "w"), ("EXPIRETIME", "{p}k")],
    [("EXPIRETIME", "{p}k", "extra")],
    [("EXPIREAT", "{p}k")],
]

RANGE_CASES = [
    [("SET", "{p}k", "Hello World"), ("GETRANGE", "{p}k", "0", "4"), ("GETRANGE", "{p}k", "-5", "-1"),
     ("GETRANGE", "{p}k", "0", "-1"), ("GETRANGE", "{p}k", "6", "100"), ("GETRANGE", "{p}k", "-100", "2"),
     ("GETRANGE", "{p}k", "5", "3"), ("GETRANGE", "{p}k", "-1", "-5"), ("GETRANGE", "{p}k", "11", "20"),
     ("GETRANGE", "{p}k", "-1", "-1"), ("GETRANGE", "{p}k", "0", "0"), ("GETRANGE", "{p}k", "-100", "-50"),
     ("GETRANGE", "{p}k", "3", "-100"), ("GETRANGE", "{p}k", "0", "9223372036854775807"),
     ("GETRANGE", "{p}k", "-9223372036854775808", "-1"), ("SUBSTR", "{p}k", "1", "3"), ("SUBSTR", "{p}k", "-3", "-2")],
    [("GETRANGE", "{p}missing", "0", "-1"), ("SUBSTR", "{p}missing", "0", "5")],
    [("SET", "{p}k", ""), ("GETRANGE", "{p}k", "0", "-1"), ("GETRANGE", "{p}k", "-1", "0")],
    [("SET", "{p}k", "12345"), ("GETRANGE", "{p}k", "1", "3"), ("INCR", "{p}k"), ("GETRANGE", "{p}k", "-2", "-1")],
    [("HSET", "{p}h", "f", "v"), ("GETRANGE", "{p}h", "0", "1"), ("GETRANGE", "{p}h", "x", "1")],
    [("GETRANGE", "{p}k", "x", "1")],
    [("GETRANGE", "{p}k", "0", "1.5")],
    [("GETRANGE", "{p}k", "0")],
    [("SET", "{p}k", "Hello World"), ("SETRANGE", "{p}k", "6", "Redis"), ("GET", "{p}k")],
    [("SETRANGE", "{p}k", "5", "abc"), ("GET", "{p}k"), ("STRLEN", "{p}k")],
    [("SET", "{p}k", "abc"), ("SETRANGE", "{p}k", "10", "x"), ("GET", "{p}k")],
    [("SET", "{p}k", "abc"), ("SETRANGE", "{p}k", "1", "XYZW"), ("GET", "{p}k")],
    [("SET", "{p}k", "abc"), ("SETRANGE", "{p}k", "1", ""), ("SETRANGE", "{p}k", "536870912", ""), ("GET", "{p}k")],
    [("SETRANGE", "{p}k", "0", ""), ("SETRANGE", "{p}k", "536870912", ""), ("EXISTS", "{p}k")],
    [("SETRANGE", "{p}k", "-1", "x")],
    [("SETRANGE", "{p}k", "-1", "")],
    [("SETRANGE", "{p}k", "x", "y")],
    [("SETRANGE", "{p}k", "536870912", "x"), ("EXISTS", "{p}k")],
    [("SET", "{p}k", "abc"), ("SETRANGE", "{p}k", "536870910", "xyz"), ("GET", "{p}k")],
    [("HSET", "{p}h", "f", "v"), ("SETRANGE", "{p}h", "0", "x")],
    [("HSET", "{p}h", "f", "v"), ("SETRANGE", "{p}h", "0", "")],
    [("HSET", "{p}h", "f", "v"), ("SETRANGE", "{p}h", "-1", "x")],
    [("SET", "{p}k", "v", "EX", "100"), ("SETRANGE", "{p}k", "0", "w"), ("TTL", "{p}k")],
    [("SET", "{p}k", "10"), ("SETRANGE", "{p}k", "0", "2"), ("INCR", "{p}k"), ("SETRANGE", "{p}k", "0", "x"),
     ("INCR", "{p}k")],
    [("SETRANGE", "{p}k", "1")],
]

HINCRBYFLOAT_CASES = [
    [("HINCRBYFLOAT", "{p}h", "f", "0.1"), ("HINCRBYFLOAT", "{p}h", "f", "0.2"), ("HGET", "{p}h", "f")],
    [("HSET", "{p}h", "f", "10.50"), ("HINCRBYFLOAT", "{p}h", "f", "0.1"), ("HINCRBYFLOAT", "{p}h", "f", "-5"),
     ("HGET", "{p}h", "f")],
    [("HSET", "{p}h", "f", "5.0e3"), ("HINCRBYFLOAT", "{p}h", "f", "2.0e2")],
    [("HINCRBYFLOAT", "{p}h", "f", "3.0"), ("HGET", "{p}h", "f"), ("HLEN", "{p}h"), ("HINCRBYFLOAT", "{p}h", "g", "1e-7")],
    [("HINCRBYFLOAT", "{p}h", "f", "1e4000"), ("HINCRBYFLOAT", "{p}h", "f", "1e4000")],
    [("HINCRBYFLOAT", "{p}h", "f", "inf"), ("EXISTS", "{p}h")],
    [("HINCRBYFLOAT", "{p}h", "f", "-inf"), ("EXISTS", "{p}h")],
    [("HINCRBYFLOAT", "{p}h", "f", "nan")],
    [("HINCRBYFLOAT", "{p}h", "f", "abc")],
    [("HINCRBYFLOAT", "{p}h", "f", " 1")],
    [("HINCRBYFLOAT", "{p}h", "f", "0x10"), ("HGET", "{p}h", "f")],
    [("HSET", "{p}h", "f", "abc"), ("HINCRBYFLOAT", "{p}h", "f", "1"), ("HGET", "{p}h", "f")],
    [("HSET", "{p}h", "f", "1 "), ("HINCRBYFLOAT", "{p}h", "f", "1")],
    [("HSET", "{p}h", "f", "inf"), ("HINCRBYFLOAT", "{p}h", "f", "1")],
    [("SET", "{p}s", "x"), ("HINCRBYFLOAT", "{p}s", "f", "1")],
    [("SET", "{p}s", "x"), ("HINCRBYFLOAT", "{p}s", "f", "x")],
    [("SET", "{p}s", "x"), ("HINCRBYFLOAT", "{p}s", "f", "inf")],
    [("HSET", "{p}h", "f", "1"), ("HINCRBYFLOAT", "{p}h", "f", "1.5"), ("HINCRBY", "{p}h", "f", "1")],
    [("HSET", "{p}h", "f", "9223372036854775807"), ("HINCRBYFLOAT", "{p}h", "f", "1")],
    [("HSET", "{p}h", "a", "1"), ("HINCRBYFLOAT", "{p}h", "b", "-0"), ("HGETALL", "{p}h")],
    [("HINCRBYFLOAT", "{p}h", "f")],
]

OBJECT_CASES = [
    *([("SET", "{p}k", value), ("OBJECT", "ENCODING", "{p}k")] for value in (
        "123", "-9223372036854775808", "9223372036854775807", "9223372036854775808", "007", "-0", "+1", "1.5", "",
        "x" * 44, "x" * 45, "12345678901234567890", "hello world")),
    [("INCR", "{p}n"), ("OBJECT", "ENCODING", "{p}n"), ("INCRBY", "{p}n", "100000"), ("OBJECT", "ENCODING", "{p}n")],
    [("MSET", "{p}a", "1", "{p}b", "xyz"), ("OBJECT", "ENCODING", "{p}a"), ("OBJECT", "encoding", "{p}b")],
    [("HSET", "{p}h", "a", "1", "b", "2"), ("OBJECT", "ENCODING", "{p}h")],
    [("HSET", "{p}h", "a", "v" * 64, "f" * 64, "1"), ("OBJECT", "ENCODING", "{p}h")],
    [("HSET", "{p}h", "a", "v" * 65), ("OBJECT", "ENCODING", "{p}h")],
    [("HSET", "{p}h", "f" * 65, "1"), ("OBJECT", "ENCODING", "{p}h")],
    [("HSET", "{p}h", *(x for i in range(100) for x in (f"f{i}", str(i)))), ("OBJECT", "ENCODING", "{p}h")],
    [("HSET", "{p}h", *(x for i in range(600) for x in (f"f{i}", str(i)))), ("OBJECT", "ENCODING", "{p}h")],
    [("OBJECT", "ENCODING", "{p}missing"), ("OBJECT", "FREQ", "{p}missing"), ("OBJECT", "IDLETIME", "{p}missing"),
     ("OBJECT", "REFCOUNT", "{p}missing")],
    [("SET", "{p}k", "abc"), ("OBJECT", "FREQ", "{p}k")],
    [("SET", "{p}k", "hello world"), ("OBJECT", "REFCOUNT", "{p}k"), ("HSET", "{p}h", "f", "v"),
     ("OBJECT", "REFCOUNT", "{p}h")],
    [("OBJECT",)],
    [("OBJECT", "FOO")],
    [("OBJECT", "foo", "{p}k")],
    [("OBJECT", "ENCODING")],
    [("OBJECT", "ENCODING", "{p}k", "x")],
    [("OBJECT", "HELP", "x")],
    [("OBJECT", "freq")],
]

ALL_CASES = EXPIRE_AT_CASES + RANGE_CASES + HINCRBYFLOAT_CASES + OBJECT_CASES


async def test_expireat_and_expiretime_answer_as_redis_server(pair: tuple[aioredis.Redis, aioredis.Redis],  # noqa: F811
                                                              redis_prefix: str) -> None:
    await compare(pair, redis_prefix, EXPIRE_AT_CASES)


async def test_getrange_substr_and_setrange_answer_as_redis_server(pair: tuple[aioredis.Redis, aioredis.Redis],  # noqa: F811
                                                                   redis_prefix: str) -> None:
    await compare(pair, redis_prefix, RANGE_CASES)


async def test_hincrbyfloat_answers_as_redis_server(pair: tuple[aioredis.Redis, aioredis.Redis],  # noqa: F811
                                                    redis_prefix: str) -> None:
    """The same long-double sums as INCRBYFLOAT, on hash fields: drawn values, then chains of three."""
    rng = random.Random(11)
    drawn = [f"{rng.choice(['', '-'])}{rng.randint(0, 10 ** rng.randint(1, 12))}.{rng.randint(0, 10 ** 6)}"
             f"{rng.choice(['', f'e{rng.randint(-20, 20)}'])}" for _ in range(30)]
    cases = [[("HINCRBYFLOAT", "{p}h", "f", a), ("HINCRBYFLOAT", "{p}h", "f", b), ("HINCRBYFLOAT", "{p}h", "f", c),
              ("HGET", "{p}h", "f")] for a, b, c in (rng.sample(drawn, 3) for _ in range(30))]
    await compare(pair, redis_prefix, HINCRBYFLOAT_CASES + cases)


async def test_object_answers_as_redis_server(pair: tuple[aioredis.Redis, aioredis.Redis],  # noqa: F811
                                              redis_prefix: str) -> None:
    await compare(pair, redis_prefix, OBJECT_CASES)
    real, mezzo = pair
    for client in (real, mezzo):  # HELP: the same shape (Mezzo's lines say what Mezzo answers)
        lines = await client.execute_command("OBJECT", "HELP")
        assert lines[0].startswith(b"OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"), lines
        assert {b"ENCODING <key>", b"FREQ <key>", b"IDLETIME <key>", b"REFCOUNT <key>", b"HELP"} <= set(lines)


async def test_the_new_commands_answer_as_redis_server_over_resp3(cache: RunningNode, redis_url: str,  # noqa: F811
                                                                  redis_prefix: str) -> None:
    port = int(cache.node.url("resp").rsplit(":", 1)[1])
    real = raw(aioredis.Redis.from_url(redis_url, protocol=3))
    mezzo = raw(aioredis.Redis(port=port, password=cache.token, protocol=3))
    try:
        await compare((real, mezzo), redis_prefix, ALL_CASES)
    finally:
        await real.aclose()
        await mezzo.aclose()


async def test_command_lists_the_new_commands_with_redis_arity_and_keys(
        pair: tuple[aioredis.Redis, aioredis.Redis]) -> None:  # noqa: F811
    """(arity, first key, last key, step) as redis-server's COMMAND INFO gives them (OBJECT is a
    container: its keys are its subcommands')."""
    real, mezzo = pair
    names = ["expireat", "pexpireat", "expiretime", "pexpiretime", "getrange", "substr", "setrange", "hincrbyfloat",
             "object"]
    ours = {bytes(row[0]).decode(): (row[1], row[3], row[4], row[5]) for row in await mezzo.execute_command("COMMAND")}
    theirs = {bytes(row[0]).decode(): (row[1], row[3], row[4], row[5])
              for row in await real.execute_command("COMMAND", "INFO", *names)}
    assert {n: ours.get(n) for n in names} == {n: theirs[n] for n in names}


async def test_error_lines_of_the_new_commands_are_redis_servers(cache: RunningNode, redis_url: str,  # noqa: F811
                                                                 redis_prefix: str) -> None:
    commands = [("EXPIREAT", "{p}k", "1", "NX", "XX"), ("PEXPIREAT", "{p}k", "1", "GT", "LT"),
                ("EXPIREAT", "{p}k", "1", "NOW"), ("EXPIREAT", "{p}k", "9223372036854776"), ("EXPIRETIME",),
                ("GETRANGE", "{p}k", "x", "1"), ("SETRANGE", "{p}k", "-1", "x"), ("SETRANGE", "{p}k", "536870912", "x"),
                ("HINCRBYFLOAT", "{p}h", "f", "x"), ("HINCRBYFLOAT", "{p}h", "f", "inf"), ("OBJECT",), ("OBJECT", "FOO"),
                ("OBJECT", "ENCODING"), ("OBJECT", "HELP", "x"), ("SET", "{p}k", "v"), ("OBJECT", "FREQ", "{p}k"),
                ("HSET", "{p}h", "f", "x"), ("HINCRBYFLOAT", "{p}h", "f", "1"), ("SETRANGE", "{p}h", "0", "x"),
                ("DEL", "{p}k", "{p}h")]
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    expected = await _error_lines(int(host_port.rsplit(":", 1)[1]), None, redis_prefix, commands)
    got = await _error_lines(int(cache.node.url("resp").rsplit(":", 1)[1]), cache.token, redis_prefix, commands)
    differences = [f"{c}: redis-server {e!r}, mezzo {g!r}" for c, e, g in zip(commands, expected, got, strict=True)
                   if e != g]
    assert not differences, "\n".join(differences)
