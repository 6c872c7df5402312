"""Fixtures for resilience tests; Redis reachability, skip/fail and key clean-up come from
``tests/conftest.py`` (``redis_url`` and ``redis_prefix``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from redis.asyncio import Redis


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url, socket_connect_timeout=3)
    yield client
    await client.aclose()
