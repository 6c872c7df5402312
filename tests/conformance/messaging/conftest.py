"""The conformance matrix: every messaging test runs once per broker engine, each on isolated state."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mezzo.testing import backends
from mezzo.testing.fixtures import RunningNode, start_node

ENGINES = ["embedded", "nats", "redis", "postgres"]


def _engine_url(request: pytest.FixtureRequest, engine: str) -> str:
    """A broker URL for ``engine`` whose streams, keys or tables belong to this test alone."""
    unique = request.getfixturevalue("unique")
    if engine == "nats":
        url = request.getfixturevalue("nats_url")
        prefix = f"MZT{unique}"
        request.addfinalizer(lambda: _run(backends.delete_nats_streams(url, prefix)))
        return f"{url}?prefix={prefix}"
    if engine == "redis":
        return f"{request.getfixturevalue('redis_url')}?prefix={request.getfixturevalue('redis_prefix')}"
    if engine == "postgres":
        return str(request.getfixturevalue("postgres_url"))  # ?schema=<fresh schema>, dropped afterwards
    return "embedded"


def _built(engine: str) -> bool:
    try:
        return importlib.util.find_spec(f"mezzo.messaging.backends.{engine}.broker") is not None
    except ModuleNotFoundError:
        return False


def _run(coro) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    asyncio.run(coro)


@pytest.fixture(params=ENGINES)
async def mq(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningNode]:
    """A node whose messaging runs on one broker engine."""
    engine = request.param
    if engine != "embedded" and not _built(engine):
        pytest.skip(f"the {engine} engine is not part of this build yet")
    running = await start_node(tmp_path / "data", broker=_engine_url(request, engine))
    try:
        yield running
    finally:
        await running.node.stop()
