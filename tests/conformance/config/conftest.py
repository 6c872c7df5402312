"""Config center conformance: every test runs on a node over SQLite and over PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from mezzo.testing.fixtures import RunningNode, start_node

NS = "/v1/config/apps/shop/envs/default/clusters/default/namespaces"


@pytest.fixture
async def cfg(store_url: str, tmp_path: Path) -> AsyncIterator[RunningNode]:
    running = await start_node(tmp_path / "data", store=store_url)
    try:
        yield running
    finally:
        await running.node.stop()


@pytest.fixture
async def http(cfg: RunningNode) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=cfg.url, headers={"Authorization": f"Bearer {cfg.token}"},
                                 timeout=30) as client:
        yield client


@pytest.fixture
def login(cfg: RunningNode):  # type: ignore[no-untyped-def]
    """``await login(name, role)``: an HTTP client with a new token of that name and role."""
    async def make(name: str, role: str) -> httpx.AsyncClient:
        async with cfg.client() as admin:
            token = (await admin.tokens.create(name, role))["token"]
        return httpx.AsyncClient(base_url=cfg.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    return make
