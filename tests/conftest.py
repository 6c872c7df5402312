"""Shared fixtures: real backends with per-test isolation, and Mezzo nodes on ephemeral ports."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from mezzo.storage import open_store
from mezzo.storage.kv import KVStore
from mezzo.testing import backends

pytest_plugins = ["mezzo.testing.fixtures"]

REQUIRE_BACKENDS = os.environ.get("MEZZO_REQUIRE_BACKENDS") == "1"


def _absent(name: str, reason: str) -> None:
    message = f"{name} is not reachable ({reason})"
    if REQUIRE_BACKENDS:
        pytest.fail(f"MEZZO_REQUIRE_BACKENDS=1 but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def unique() -> str:
    """A short unique suffix for names of streams, keys and schemas."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
async def postgres_url(unique: str) -> AsyncIterator[str]:
    """A PostgreSQL URL whose ``schema`` parameter points at a fresh schema, dropped afterwards."""
    base = os.environ.get("MEZZO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    problem = await backends.postgres_problem(base)
    if problem:
        _absent("PostgreSQL", problem)
    schema = f"t_{unique}"
    yield f"{base}{'&' if '?' in base else '?'}schema={schema}"
    await backends.drop_postgres_schema(base, schema)


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    url = os.environ.get("MEZZO_TEST_REDIS", "redis://127.0.0.1:6379/0")
    problem = await backends.redis_problem(url)
    if problem:
        _absent("Redis", problem)
    yield url


@pytest.fixture
def redis_prefix(unique: str, redis_url: str) -> Iterator[str]:
    """A key prefix for this test; every key under it is deleted afterwards."""
    prefix = f"mezzo-test:{unique}:"
    yield prefix
    backends.delete_redis_prefix(redis_url, prefix)


@pytest.fixture
async def nats_url() -> AsyncIterator[str]:
    url = os.environ.get("MEZZO_TEST_NATS", "nats://127.0.0.1:4222")
    problem = await backends.nats_problem(url)
    if problem:
        _absent("NATS", problem)
    yield url


async def _open_store(url: str) -> AsyncIterator[KVStore]:
    kv = open_store(url)
    kv.poll_interval = 0.05  # type: ignore[attr-defined]  # watch tests should not wait long
    await kv.open()
    try:
        yield kv
    finally:
        await kv.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store conformance matrix: a fresh SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kv.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[KVStore]:
    async for kv in _open_store(store_url):
        yield kv


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[KVStore]:
    async for kv in _open_store(f"sqlite:///{tmp_path / 'kv.db'}"):
        yield kv


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The root logger's handlers and level, and structlog's defaults, as they were before the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()
