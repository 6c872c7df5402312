"""Fixtures for resilience tests; the backend helpers are meant to move to a shared conftest."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from redis.asyncio import Redis

REDIS_URL = os.environ.get("MEZZO_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def backend_unavailable(backend: str, reason: str) -> NoReturn:
    """Skip with a visible reason, or fail when ``MEZZO_REQUIRE_BACKENDS=1`` (CI)."""
    if os.environ.get("MEZZO_REQUIRE_BACKENDS") == "1":
        pytest.fail(f"{backend} is required (MEZZO_REQUIRE_BACKENDS=1) but unavailable: {reason}")
    pytest.skip(f"{backend} unavailable: {reason}")


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    try:
        from redis.asyncio import Redis
        from redis.exceptions import RedisError
    except ImportError as exc:  # the redis extra is not installed
        backend_unavailable("redis", f"redis-py not installed ({exc})")
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        backend_unavailable("redis", f"cannot reach {REDIS_URL}: {exc}")
    yield client
    await client.aclose()


@pytest.fixture
async def redis_prefix(redis_client: Redis) -> AsyncIterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    prefix = f"mezzo-test:resilience:{uuid.uuid4().hex}:"
    yield prefix
    keys = [key async for key in redis_client.scan_iter(match=prefix + "*")]
    if keys:
        await redis_client.delete(*keys)
