"""The embedded cache's Redis port answers what redis-server answers (issue 8: "any Redis client works").

Each case runs through redis-py against the shared redis-server (keys under this test's prefix) and
against a Mezzo node, with redis-py's reply parsers removed so both answers are compared as they
came off the wire: values, integers, nulls and error texts.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from mezzo.testing.fixtures import RunningNode

from .test_cache_sdk import cache  # noqa: F401  (the cache fixture: a node without snapshots)


def raw(client: aioredis.Redis) -> aioredis.Redis:
    client.response_callbacks.clear()  # answers as they came: bytes, ints, lists, errors
    return client


@pytest.fixture
async def pair(cache: RunningNode, redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:  # noqa: F811
    port = int(cache.node.url("resp").rsplit(":", 1)[1])
    real = raw(aioredis.Redis.from_url(redis_url))
    mezzo = raw(aioredis.Redis(port=port, password=cache.token))
    try:
        yield real, mezzo
    finally:
        await real.aclose()
        await mezzo.aclose()


async def answer(client: aioredis.Redis, args: tuple[str, ...]) -> Any:
    try:
        reply = await client.execute_command(*args)
    except RedisError as exc:
        return ("error", str(exc))
    if args[0] in ("TTL", "PTTL") and isinstance(reply, int) and reply > 0:
        return ("about", round(math.log10(reply) * 4))  # how long, not to the second
    return reply


async def run_case(client: aioredis.Redis, prefix: str, case: list[tuple[str, ...]]) -> list[Any]:
    out = []
    for command in case:
        args = tuple(a.replace("{p}", prefix) for a in command)
        out.append(await answer(client, args))
    return out


async def scan_all(client: aioredis.Redis, match: str, count: int) -> set[bytes]:
    """SCAN to the end (by hand: the raw clients have no parser for SCAN's cursor)."""
    found: set[bytes] = set()
    cursor = b"0"
    while True:
        cursor, keys = await client.execute_command("SCAN", cursor, "MATCH", match, "COUNT", count)
        found.update(keys)
        if int(cursor) == 0:
            return found


async def clean(real: aioredis.Redis, mezzo: aioredis.Redis, prefix: str) -> None:
    keys = list(await scan_all(real, prefix + "*", 1000))
    if keys:
        await real.delete(*keys)
    await mezzo.execute_command("FLUSHDB")  # the test node's own engine


async def compare(pair: tuple[aioredis.Redis, aioredis.Redis], prefix: str, cases: list[list[tuple[str, ...]]]) -> None:
    real, mezzo = pair
    differences = []
    for case in cases:
        expected = await run_case(real, prefix, case)
        got = await run_case(mezzo, prefix, case)
        await clean(real, mezzo, prefix)
        if got != expected:
            differences.append(f"{case}\n    redis-server: {expected}\n    mezzo:        {got}")
    assert not differences, "answers differ from redis-server:\n" + "\n".join(differences)


# integers as Redis reads them (string2ll): no spaces, signs, underscores or leading zeros; 64 bits
INTEGER_CASES = [
    [("SET", "{p}n", "1_0"), ("INCR", "{p}n")],
    [("SET", "{p}n", " 5"), ("INCRBY", "{p}n", "1")],
    [("SET", "{p}n", "+5"), ("DECR", "{p}n")],
    [("SET", "{p}n", "007"), ("INCR", "{p}n")],
    [("SET", "{p}n", "-0"), ("INCR", "{p}n")],
    [("INCRBY", "{p}n", "99999999999999999999")],
    [("INCRBY", "{p}n", "1_0")],
    [("DECRBY", "{p}n", " 1")],
    [("SET", "{p}n", "9223372036854775807"), ("INCR", "{p}n"), ("GET", "{p}n")],
    [("SET", "{p}n", "-9223372036854775808"), ("DECR", "{p}n"), ("INCRBY", "{p}n", "-1")],
    [("SET", "{p}n", "10"), ("DECRBY", "{p}n", "-9223372036854775808")],
    [("HSET", "{p}h", "f", "9223372036854775807"), ("HINCRBY", "{p}h", "f", "1"), ("HGET", "{p}h", "f")],
    [("HSET", "{p}h", "f", "-9223372036854775808"), ("HINCRBY", "{p}h", "f", "-1"), ("HGET", "{p}h", "f")],
    [("HSET", "{p}h", "f", " 1"), ("HINCRBY", "{p}h", "f", "1")],
    [("HINCRBY", "{p}h", "f", "1_0")],
    [("SET", "{p}n", "12"), ("INCRBY", "{p}n", "-12"), ("GET", "{p}n")],
]

# expire times: overflowing ones refused, EXPIRE's NX/XX/GT/LT, GETEX's options, SET's option rules
EXPIRY_CASES = [
    [("SET", "{p}k", "v", "EX", "9223372036854775807"), ("EXISTS", "{p}k")],
    [("SET", "{p}k", "v", "PX", "9223372036854775807"), ("EXISTS", "{p}k")],
    [("SET", "{p}k", "v", "EXAT", "9223372036854775807"), ("EXISTS", "{p}k")],
    [("SET", "{p}k", "v", "EX", "10", "PX", "100")],
    [("SET", "{p}k", "v", "EX", "10", "EX", "200"), ("TTL", "{p}k")],
    [("SET", "{p}k", "v", "KEEPTTL", "EX", "10")],
    [("SET", "{p}k", "v", "EX", "0")],
    [("SET", "{p}k", "v", "EX", "x")],
    [("SET", "{p}k", "v", "NX", "XX")],
    [("SET", "{p}k", "v", "EXAT", "1"), ("EXISTS", "{p}k")],
    [("SETEX", "{p}k", "9223372036854775807", "v")],
    [("SETEX", "{p}k", "0", "v")],
    [("PSETEX", "{p}k", "100000", "v"), ("TTL", "{p}k"), ("GET", "{p}k")],
    [("PSETEX", "{p}k", "0", "v")],
    [("SET", "{p}k", "v"), ("EXPIRE", "{p}k", "9223372036854775807"), ("TTL", "{p}k")],
    [("SET", "{p}k", "v"), ("EXPIRE", "{p}k", "-9223372036854775807"), ("EXISTS", "{p}k")],
    [("SET", "{p}k", "v"), ("PEXPIRE", "{p}k", "9223372036854775807"), ("TTL", "{p}k")],
    [("SET", "{p}k", "v"), ("EXPIRE", "{p}k", "100"), ("EXPIRE", "{p}k", "50", "NX"), ("TTL", "{p}k"),
     ("EXPIRE", "{p}k", "1000", "XX"), ("TTL", "{p}k")],
    [("SET", "{p}k", "v"), ("EXPIRE", "{p}k", "100", "XX"), ("TTL", "{p}k"), ("EXPIRE", "{p}k", "100", "nx"),
     ("TTL", "{p}k")],
    [("SET", "{p}k", "v"), ("EXPIRE", "{p}k", "100", "GT"), ("TTL", "{p}k")],
    [("SET", "{p}k", "v"), ("EXPIRE", "{p}k", "100", "LT"), ("TTL", "{p}k")],
    [("SET", "{p}k", "v", "EX", "100"), ("EXPIRE", "{p}k", "50", "GT"), ("EXPIRE", "{p}k", "1000", "GT"),
     ("TTL", "{p}k")],
    [("SET", "{p}k", "v", "EX", "1000"), ("PEXPIRE", "{p}k", "5000000", "LT"), ("PEXPIRE", "{p}k", "50000", "LT"),
     ("TTL", "{p}k")],
    [("SET", "{p}k", "v"), ("EXPIRE", "{p}k", "100", "NX", "XX")],
    [("SET", "{p}k", "v"), ("EXPIRE", "{p}k", "100", "GT", "LT")],
    [("SET", "{p}k", "v"), ("EXPIRE", "{p}k", "100", "BOGUS")],
    [("SET", "{p}k", "v"), ("EXPIRE", "{p}k", "x", "BOGUS")],
    [("EXPIRE", "{p}missing", "100", "XX")],
    [("SET", "{p}k", "v"), ("EXPIRE", "{p}k", "-1", "XX"), ("EXISTS", "{p}k")],
    [("SET", "{p}k", "v", "EX", "100"), ("EXPIRE", "{p}k", "-1", "GT"), ("EXISTS", "{p}k")],
    [("SET", "{p}k", "v", "EX", "100"), ("EXPIRE", "{p}k", "0", "LT"), ("EXISTS", "{p}k")],
    [("SET", "{p}k", "v"), ("GETEX", "{p}k", "EXAT", "99999999999"), ("TTL", "{p}k")],
    [("SET", "{p}k", "v"), ("GETEX", "{p}k", "PXAT", "99999999999000"), ("TTL", "{p}k")],
    [("SET", "{p}k", "v"), ("GETEX", "{p}k", "EXAT", "1"), ("EXISTS", "{p}k")],
    [("SET", "{p}k", "v"), ("GETEX", "{p}k", "EX", "9223372036854775807"), ("TTL", "{p}k")],
    [("SET", "{p}k", "v"), ("GETEX", "{p}k", "EX", "0")],
    [("SET", "{p}k", "v"), ("GETEX", "{p}k", "EX", "10", "PERSIST")],
    [("SET", "{p}k", "v", "EX", "100"), ("GETEX", "{p}k", "PERSIST"), ("TTL", "{p}k")],
    [("GETEX", "{p}missing", "BOGUS")],
    [("GETEX", "{p}missing", "EX", "0")],
]

# connection commands and argument checks
PROTOCOL_CASES = [
    [("PING", "a", "b")],
    [("PING", "a")],
    [("HELLO", "foo")],
    [("HELLO", "4")],
    [("CLIENT", "SETNAME", "a\nb")],
    [("CLIENT", "SETNAME", "a b")],
    [("AUTH", "a", "b", "c")],
    [("SCAN", "abc")],
    [("SCAN", "0", "COUNT", "0")],
    [("SCAN", "0", "BOGUS", "1")],
    [("SELECT", "16")],
    [("SELECT", "x")],
    [("SET", "{p}k", "abc"), ("HGET", "{p}k", "f")],
    [("HSET", "{p}h", "f", "v"), ("GET", "{p}h"), ("INCR", "{p}h"), ("MGET", "{p}h", "{p}x")],
    [("HSET", "{p}h", "f", "v"), ("SET", "{p}h", "x", "GET"), ("GET", "{p}h")],
    [("HSET", "{p}h", "f")],
    [("HSET", "{p}h", "a", "1", "b", "2"), ("HDEL", "{p}h", "a", "b"), ("EXISTS", "{p}h")],
    [("MSET", "{p}a", "1", "{p}b")],
    [("SET", "{p}k", "v"), ("SETNX", "{p}k", "w"), ("GET", "{p}k")],
    [("APPEND", "{p}k", "x"), ("APPEND", "{p}k", "yz"), ("STRLEN", "{p}k")],
    [("GETDEL", "{p}missing")],
    [("INCRBYFLOAT", "{p}f", "abc")],
    [("SET", "{p}f", "1.5"), ("INCRBY", "{p}f", "1")],
    [("SET", "{p}k", "v"), ("TTL", "{p}k", "extra")],
]


async def test_integers_answer_as_redis_server(pair: tuple[aioredis.Redis, aioredis.Redis], redis_prefix: str) -> None:
    await compare(pair, redis_prefix, INTEGER_CASES)


async def test_expire_times_and_options_answer_as_redis_server(pair: tuple[aioredis.Redis, aioredis.Redis],
                                                               redis_prefix: str) -> None:
    await compare(pair, redis_prefix, EXPIRY_CASES)


async def test_connection_commands_and_argument_errors_answer_as_redis_server(
        pair: tuple[aioredis.Redis, aioredis.Redis], redis_prefix: str) -> None:
    await compare(pair, redis_prefix, PROTOCOL_CASES)


async def test_resp3_answers_as_redis_server(cache: RunningNode, redis_url: str, redis_prefix: str) -> None:  # noqa: F811
    """The same cases and RESP3's own types (maps, nulls, sets of replies) over ``HELLO 3``."""
    port = int(cache.node.url("resp").rsplit(":", 1)[1])
    real = raw(aioredis.Redis.from_url(redis_url, protocol=3))
    mezzo = raw(aioredis.Redis(port=port, password=cache.token, protocol=3))
    resp3 = [[("HSET", "{p}h", "a", "1", "b", "2"), ("HGETALL", "{p}h"), ("HGETALL", "{p}none"), ("HMGET", "{p}h", "a", "z"),
              ("HKEYS", "{p}h"), ("HVALS", "{p}h"), ("TYPE", "{p}h"), ("TYPE", "{p}none")],
             [("GET", "{p}none"), ("MGET", "{p}none", "{p}h"), ("SET", "{p}k", "v", "GET"), ("SET", "{p}k", "w", "GET"),
              ("GETDEL", "{p}k"), ("GETEX", "{p}k"), ("HGET", "{p}h", "a"), ("CLIENT", "GETNAME")],
             [("INCRBYFLOAT", "{p}f", "1.5"), ("INCRBYFLOAT", "{p}f", "0.25"), ("CONFIG", "GET", "appendonly"),
              ("ECHO", "hi"), ("PING",), ("PING", "there")]]
    try:
        await compare((real, mezzo), redis_prefix, INTEGER_CASES + EXPIRY_CASES + PROTOCOL_CASES + resp3)
    finally:
        await real.aclose()
        await mezzo.aclose()


async def test_incrbyfloat_writes_what_redis_server_writes(pair: tuple[aioredis.Redis, aioredis.Redis],
                                                          redis_prefix: str) -> None:
    """redis-server adds in long doubles and writes ``%.17Lf`` without trailing zeros: no exponent, no
    0.30000000000000004."""
    fixed = ["0.1", "0.2", "0.7", "1.1", "2.2", "0.00001", "1e-7", "1.5e300", "1e4000", "123456789012345678",
             "1e17", "3.0", "5.0e3", "-0", ".5", "5.", "+1.5", "1E5", "0.30000000000000004", "-2.5", "1e-18",
             "10.5", "99999999999999999999", "1e-4999", "inf", "nan", "1_0", " 1", "0x10", "0x1.8p1", "-0x.8p-2",
             "0x", "1e"]
    rng = random.Random(8)
    drawn = [f"{rng.choice(['', '-'])}{rng.randint(0, 10 ** rng.randint(1, 12))}.{rng.randint(0, 10 ** 6)}"
             f"{rng.choice(['', f'e{rng.randint(-20, 20)}'])}" for _ in range(40)]
    cases = [[("INCRBYFLOAT", "{p}f", value), ("GET", "{p}f")] for value in fixed + drawn]
    cases += [[("INCRBYFLOAT", "{p}f", a), ("INCRBYFLOAT", "{p}f", b), ("INCRBYFLOAT", "{p}f", c)]
              for a, b, c in (rng.sample(fixed[:22] + drawn, 3) for _ in range(40))]
    cases += [[("SET", "{p}f", "1e-05"), ("INCRBYFLOAT", "{p}f", "1")], [("SET", "{p}f", "1 "), ("INCRBYFLOAT", "{p}f", "1")]]
    await compare(pair, redis_prefix, cases)


def _strings(rng: random.Random, alphabet: str, count: int, longest: int) -> list[str]:
    return sorted({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, longest))) for _ in range(count)})


async def test_keys_and_scan_match_globs_as_redis_server(pair: tuple[aioredis.Redis, aioredis.Redis],
                                                         redis_prefix: str) -> None:
    """Redis' globs: ``[^a]`` is "not a", ``\\`` quotes, ``[a-c]`` and reversed ``[c-a]`` ranges, odd brackets."""
    real, mezzo = pair
    rng = random.Random(88)
    names = [*_strings(rng, "abc-^][\\*?", 80, 4), "hello", "hallo", "hbllo", "a*b", "axb", "a?b", "a]b", "a\\b"]
    patterns = _strings(rng, "abc*?[]^-\\", 250, 6)
    patterns += ["h[^e]llo", "h[a-b]llo", "h[b-a]llo", "a\\*b", "a*b", "a[*]b", "[]", "[^]", "a[", "a[\\]]b", "*\\",
                 "[a-]", "[^-a]*", "**a**", "*a*a*a*b", "\\a*", "h?llo", "[!a]*"]
    values = {redis_prefix + name: "1" for name in names}
    try:
        await real.mset(values)
        await mezzo.mset(values)
        differences = []
        for pattern in patterns:
            expected = sorted(await real.execute_command("KEYS", redis_prefix + pattern))
            got = sorted(await mezzo.execute_command("KEYS", redis_prefix + pattern))
            if got != expected:
                differences.append(f"KEYS {pattern!r}: redis-server {expected}, mezzo {got}")
        for pattern in patterns[::10]:
            got = sorted(await scan_all(mezzo, redis_prefix + pattern, 7))
            expected = sorted(await scan_all(real, redis_prefix + pattern, 1000))
            if got != expected:
                differences.append(f"SCAN MATCH {pattern!r}: redis-server {expected}, mezzo {got}")
        assert not differences, "\n".join(differences)
    finally:
        await clean(real, mezzo, redis_prefix)


async def test_command_describes_each_command_as_redis_server(pair: tuple[aioredis.Redis, aioredis.Redis]) -> None:
    """COMMAND's arity and key positions (what cluster-aware clients read to find keys) match Redis'."""
    real, mezzo = pair
    rows = await mezzo.execute_command("COMMAND")
    ours = {bytes(row[0]).decode(): (row[1], row[3], row[4], row[5]) for row in rows}
    theirs_rows = await real.execute_command("COMMAND", "INFO", *ours)
    theirs = {bytes(row[0]).decode(): (row[1], row[3], row[4], row[5]) for row in theirs_rows if row}
    differences = {name: (ours[name], theirs.get(name)) for name in ours if ours[name] != theirs.get(name)}
    assert not differences, f"(arity, first key, last key, step): mezzo vs redis-server {differences}"


async def test_flushdb_takes_only_async_or_sync(pair: tuple[aioredis.Redis, aioredis.Redis]) -> None:
    """``FLUSHDB BOGUS`` is a syntax error on Redis; it must not empty the namespace (not sent to the shared server)."""
    _, mezzo = pair
    await mezzo.set("kept", "1")
    for command in (("FLUSHDB", "BOGUS"), ("FLUSHDB", "ASYNC", "SYNC"), ("FLUSHALL", "NOW")):
        assert await answer(mezzo, command) == ("error", "syntax error")
    assert await mezzo.get("kept") == b"1"
    assert await mezzo.execute_command("FLUSHDB", "ASYNC") == b"OK" and await mezzo.get("kept") is None


async def test_hello_3_auth_and_auth_with_a_user_name_log_in(cache: RunningNode) -> None:  # noqa: F811
    """The documented logins: ``HELLO 3 AUTH user token`` (redis-py protocol=3 with a user name) and ``AUTH user token``."""
    port = int(cache.node.url("resp").rsplit(":", 1)[1])
    for protocol in (2, 3):
        client = aioredis.Redis(port=port, username="anyone", password=cache.token, protocol=protocol)
        try:
            assert await client.set("who", "me") and await client.get("who") == b"me"
        finally:
            await client.aclose()
    refused = aioredis.Redis(port=port, username="anyone", password="mzo_not_a_token", protocol=3,
                             retry=Retry(NoBackoff(), 0))  # a refused login is not retried
    try:
        with pytest.raises(RedisError, match=r"WRONGPASS|invalid"):
            await refused.get("who")
    finally:
        await refused.aclose()


async def _error_lines(port: int, password: str | None, prefix: str, commands: list[tuple[str, ...]]) -> list[bytes]:
    """Each command's reply line as sent (redis-py drops a leading ``ERR``, so the code is compared here)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = []
    try:
        for args in ([("AUTH", password)] if password else []) + commands:
            parts = [a.replace("{p}", prefix).encode() for a in args]
            writer.write(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
            await writer.drain()
            lines.append((await asyncio.wait_for(reader.readline(), 10)).replace(prefix.encode(), b"{p}"))
    finally:
        writer.close()
    return lines[1:] if password else lines


async def test_error_replies_carry_the_codes_redis_server_sends(cache: RunningNode, redis_url: str,  # noqa: F811
                                                               redis_prefix: str) -> None:
    commands = [("EXPIRE", "{p}k", "1", "NX", "XX"), ("EXPIRE", "{p}k", "1", "GT", "LT"), ("EXPIRE", "{p}k", "1", "NOW"),
                ("SET", "{p}k", "v", "EX", "0"), ("SET", "{p}k", "v", "NX", "XX"), ("INCRBY", "{p}k", "x"),
                ("INCRBYFLOAT", "{p}k", "x"), ("GETEX", "{p}k", "BOGUS"), ("HELLO", "4"), ("HELLO", "x"),
                ("PING", "a", "b"), ("CLIENT", "SETNAME", "a b"), ("SCAN", "x"), ("SELECT", "99"),
                ("GET",), ("FLUSHDB", "NOW", "LATER"), ("AUTH", "a", "b", "c")]
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    expected = await _error_lines(int(host_port.rsplit(":", 1)[1]), None, redis_prefix, commands)
    got = await _error_lines(int(cache.node.url("resp").rsplit(":", 1)[1]), cache.token, redis_prefix, commands)
    differences = [f"{c}: redis-server {e!r}, mezzo {g!r}" for c, e, g in zip(commands, expected, got, strict=True)
                   if e != g]
    assert not differences, "\n".join(differences)
