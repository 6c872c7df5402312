from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mezzo.storage import open_store
from mezzo.storage.kv import KVStore


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kv.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[KVStore]:
    kv = open_store(store_url)
    kv.poll_interval = 0.05  # type: ignore[attr-defined]
    await kv.open()
    try:
        yield kv
    finally:
        await kv.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[KVStore]:
    kv = open_store(f"sqlite:///{tmp_path / 'kv.db'}")
    kv.poll_interval = 0.05  # type: ignore[attr-defined]
    await kv.open()
    try:
        yield kv
    finally:
        await kv.close()
