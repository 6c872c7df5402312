"""Crash recovery: a coordinator killed with SIGKILL in the middle of a saga; another node (or the
same one restarted) resumes the transaction once the lease runs out and finishes it."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from mezzo.testing.fixtures import spawn_node, stop_process, wait_for
from mezzo.transactions.testing import Busi, serve_busi

pytestmark = pytest.mark.slow


@pytest.fixture
async def busi() -> AsyncIterator[Busi]:
    async with serve_busi() as app:
        yield app


async def run_crash(busi: Busi, data_dirs: tuple[Path, Path], env: dict[str, str]) -> None:
    busi.gates["b"] = asyncio.Event()  # step b hangs until the first node is dead
    first = await asyncio.to_thread(spawn_node, data_dirs[0], env)
    try:
        body = {"gid": "crash-1", "mode": "saga", "options": {"retry_interval": 0.05, "request_timeout": 30},
                "steps": [{"action": f"{busi.url}/{n}", "compensate": f"{busi.url}/{n}-undo"} for n in "abc"]}
        async with httpx.AsyncClient(base_url=first.url, headers={"Authorization": f"Bearer {first.token}"}) as http:
            assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
        await wait_for(lambda: "b" in busi.names("crash-1"), 20)
    finally:
        stop_process(first, signal.SIGKILL)
    busi.gates["b"].set()
    second = await asyncio.to_thread(spawn_node, data_dirs[1], {**env, "MEZZO_ADMIN_TOKEN": first.token})
    try:
        async with httpx.AsyncClient(base_url=second.url, headers={"Authorization": f"Bearer {first.token}"}) as http:
            async def finished() -> bool:
                return (await http.get("/v1/tx/transactions/crash-1")).json()["status"] == "succeed"

            await wait_for(finished, 30)
        assert busi.names("crash-1") == ["a", "b", "b", "c"]  # b is called again: branches are idempotent
    finally:
        stop_process(second)


ENV = {"MEZZO_TX_LEASE": "1", "MEZZO_TX_POLL": "0.05", "MEZZO_ADMIN_TOKEN": "mzo_crashtest_" + "y" * 32}


async def test_restarted_node_resumes_on_sqlite(busi: Busi, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    await run_crash(busi, (data, data), ENV)


async def test_other_node_takes_over_on_postgres(busi: Busi, tmp_path: Path, postgres_url: str) -> None:
    dirs = (tmp_path / "a", tmp_path / "b")
    for d in dirs:
        d.mkdir()
    await run_crash(busi, dirs, {**ENV, "MEZZO_STORE": postgres_url})


async def test_a_crash_while_calling_ahead_compensates_every_step_that_may_have_run(busi: Busi, tmp_path: Path) -> None:
    """The first round of a saga calls b without a mark written first (Active.ahead); the node is killed
    during b's call. Resumed past its timeout_to_fail, the saga rolls back: b, never marked in the log, is
    compensated, and so is c (it may have run as far as the log can tell: a null compensation)."""
    data = tmp_path / "data"
    data.mkdir()
    env = {**ENV, "MEZZO_TX_LEASE": "4"}  # a call goes ahead with over 2 s of lease left
    busi.gates["b"] = asyncio.Event()
    first = await asyncio.to_thread(spawn_node, data, env)
    try:
        body = {"gid": "ahead-crash", "mode": "saga",
                "options": {"retry_interval": 0.05, "request_timeout": 1, "timeout_to_fail": 2},
                "steps": [{"action": f"{busi.url}/{n}", "compensate": f"{busi.url}/{n}-undo"} for n in "abc"]}
        async with httpx.AsyncClient(base_url=first.url, headers={"Authorization": f"Bearer {first.token}"}) as http:
            assert (await http.post("/v1/tx/transactions", json=body)).status_code == 201
        await wait_for(lambda: "b" in busi.names("ahead-crash"), 20)
    finally:
        stop_process(first, signal.SIGKILL)
    busi.gates["b"].set()
    second = await asyncio.to_thread(spawn_node, data, env)
    try:
        async with httpx.AsyncClient(base_url=second.url, headers={"Authorization": f"Bearer {first.token}"}) as http:
            async def failed() -> bool:
                return (await http.get("/v1/tx/transactions/ahead-crash")).json()["status"] == "failed"

            await wait_for(failed, 30)
        assert busi.names("ahead-crash") == ["a", "b", "c-undo", "b-undo", "a-undo"]
    finally:
        stop_process(second)
