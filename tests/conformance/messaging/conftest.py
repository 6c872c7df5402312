"""The conformance matrix: every messaging test runs once per broker engine, each on isolated state."""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mezzo.testing import backends
from mezzo.testing.fixtures import RunningNode, start_node

ENGINES = ["embedded", "nats", "redis", "postgres"]
REQUIRE_BACKENDS = os.environ.get("MEZZO_REQUIRE_BACKENDS") == "1"


def _built(engine: str) -> bool:
    try:
        return importlib.util.find_spec(f"mezzo.messaging.backends.{engine}.broker") is not None
    except ModuleNotFoundError:
        return False


def _absent(engine: str, problem: str) -> None:
    message = f"{engine} is not reachable ({problem})"
    if REQUIRE_BACKENDS:
        pytest.fail(f"MEZZO_REQUIRE_BACKENDS=1 but {message}", pytrace=False)
    pytest.skip(message)


async def _engine(engine: str, unique: str) -> tuple[str, object]:
    """A broker URL for ``engine`` whose streams, keys or tables belong to this test alone,
    and what to clean up afterwards."""
    if engine == "nats":
        url = os.environ.get("MEZZO_TEST_NATS", "nats://127.0.0.1:4222")
        if problem := await backends.nats_problem(url):
            _absent("NATS", problem)
        prefix = f"MZT{unique}"
        return f"{url}?prefix={prefix}", ("nats", url, prefix)
    if engine == "redis":
        url = os.environ.get("MEZZO_TEST_REDIS", "redis://127.0.0.1:6379/0")
        if problem := await backends.redis_problem(url):
            _absent("Redis", problem)
        prefix = f"mezzo-test:{unique}:"
        return f"{url}{'&' if '?' in url else '?'}prefix={prefix}", ("redis", url, prefix)
    if engine == "postgres":
        url = os.environ.get("MEZZO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
        if problem := await backends.postgres_problem(url):
            _absent("PostgreSQL", problem)
        schema = f"t_{unique}"
        return f"{url}{'&' if '?' in url else '?'}schema={schema}", ("postgres", url, schema)
    return "embedded", None


async def _clean(what: object) -> None:
    if what is None:
        return
    kind, url, name = what  # type: ignore[misc]
    if kind == "nats":
        await backends.delete_nats_streams(url, name)
    elif kind == "redis":
        backends.delete_redis_prefix(url, name)
    else:
        await backends.drop_postgres_schema(url, name)


@pytest.fixture(params=ENGINES)
async def mq(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningNode]:
    """A node whose messaging runs on one broker engine."""
    engine = request.param
    if engine != "embedded" and not _built(engine):
        pytest.skip(f"the {engine} engine is not part of this build yet")
    url, cleanup = await _engine(engine, uuid.uuid4().hex[:12])
    running = await start_node(tmp_path / "data", broker=url)
    try:
        yield running
    finally:
        await running.node.stop()
        await _clean(cleanup)
