from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from mezzo.resilience import RedisFixedWindow, RedisSlidingWindow, RedisTokenBucket

if TYPE_CHECKING:
    from redis.asyncio import Redis


async def test_token_bucket_allows_the_burst_then_denies(
    redis_client: Redis, redis_prefix: str
) -> None:
    bucket = RedisTokenBucket(redis_client, rate=0.001, burst=3, prefix=redis_prefix)
    decisions = [await bucket.acquire("user") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    denied = decisions[-1]
    assert 0 < denied.retry_after <= 1000  # one token at 0.001 per second
    assert denied.reset_after >= denied.retry_after
    assert await redis_client.pttl(redis_prefix + "user") > 0  # the key cleans itself up


async def test_token_bucket_cost_and_bounds(redis_client: Redis, redis_prefix: str) -> None:
    bucket = RedisTokenBucket(redis_client, rate=0.001, burst=5, prefix=redis_prefix)
    assert (await bucket.acquire("k", cost=4)).remaining == 1
    assert not (await bucket.acquire("k", cost=2)).allowed
    assert (await bucket.acquire("k", cost=1)).allowed
    with pytest.raises(ValueError, match="cost"):
        await bucket.acquire("k", cost=6)


async def test_fixed_window_counts_down_and_expires(redis_client: Redis, redis_prefix: str) -> None:
    limiter = RedisFixedWindow(redis_client, limit=2, window=86_400, prefix=redis_prefix)
    first, second, third = [await limiter.acquire("k") for _ in range(3)]
    assert (first.remaining, second.remaining) == (1, 0)
    assert not third.allowed
    assert 0 < third.retry_after <= 86_400
    assert third.retry_after == pytest.approx(third.reset_after)
    assert 0 < await redis_client.pttl(redis_prefix + "k") <= 86_400_000


async def test_sliding_window_allows_the_limit(redis_client: Redis, redis_prefix: str) -> None:
    limiter = RedisSlidingWindow(redis_client, limit=3, window=86_400, prefix=redis_prefix)
    decisions = [await limiter.acquire("k") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].retry_after > 0
    assert await redis_client.pttl(redis_prefix + "k") > 0


async def test_keys_are_independent(redis_client: Redis, redis_prefix: str) -> None:
    limiter = RedisFixedWindow(redis_client, limit=1, window=86_400, prefix=redis_prefix)
    assert (await limiter.acquire("alice")).allowed
    assert not (await limiter.acquire("alice")).allowed
    assert (await limiter.acquire("bob")).allowed


@pytest.mark.parametrize("kind", ["token_bucket", "fixed_window", "sliding_window"])
async def test_concurrent_callers_get_exactly_the_limit(
    redis_client: Redis, redis_prefix: str, kind: str
) -> None:
    limit, callers = 10, 60
    # Refill and windows are slow enough that nothing replenishes while the test runs.
    limiter = {
        "token_bucket": lambda: RedisTokenBucket(
            redis_client, rate=1e-6, burst=limit, prefix=redis_prefix
        ),
        "fixed_window": lambda: RedisFixedWindow(redis_client, limit, 864_000, prefix=redis_prefix),
        "sliding_window": lambda: RedisSlidingWindow(
            redis_client, limit, 864_000, prefix=redis_prefix
        ),
    }[kind]()
    # Several connections from the pool, as from several nodes.
    decisions = await asyncio.gather(*(limiter.acquire("shared") for _ in range(callers)))
    assert sum(d.allowed for d in decisions) == limit
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(limit))
