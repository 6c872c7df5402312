"""Transaction conformance: every test runs a coordinator over SQLite and over PostgreSQL, against a
small branch application ("busi") served in this process whose answers each test scripts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mezzo.testing.fixtures import RunningNode, start_node, wait_for
from mezzo.transactions.testing import Busi, serve_busi

__all__ = ["Busi"]

@pytest.fixture
async def busi() -> AsyncIterator[Busi]:
    async with serve_busi() as app:
        yield app


async def start_tx_node(data_dir: Path, store: str, targets: list[str] | None = None) -> RunningNode:
    return await start_node(data_dir, store=store, targets=targets or ["transactions", "api"])


@pytest.fixture(autouse=True)
def fast_recovery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEZZO_TX_POLL", "0.05")
    monkeypatch.setenv("MEZZO_TX_LEASE", "2")


@pytest.fixture
async def txnode(store_url: str, tmp_path: Path) -> AsyncIterator[RunningNode]:
    running = await start_tx_node(tmp_path / "data", store_url)
    try:
        yield running
    finally:
        await running.node.stop()


@pytest.fixture
async def http(txnode: RunningNode) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=txnode.url, headers={"Authorization": f"Bearer {txnode.token}"},
                                 timeout=30) as client:
        yield client


async def final_status(http: httpx.AsyncClient, gid: str, timeout: float = 20) -> dict[str, Any]:
    """Poll until the transaction ends; returns it with its branches."""
    async def ended() -> dict[str, Any] | None:
        body = (await http.get(f"/v1/tx/transactions/{gid}")).json()
        return body if body["status"] in ("succeed", "failed") else None

    return await wait_for(ended, timeout)  # type: ignore[no-any-return]


FAST = {"retry_interval": 0.05, "request_timeout": 5}
