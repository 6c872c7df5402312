"""In-process handlers survive restarts: the coordinator SIGKILLed in the middle of a branch call
(the restarted node calls the handler again, the barrier turns the duplicate into a no-op), and the
application down while the coordinator calls (it retries until the handlers are back on their address)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from mezzo import Mezzo
from mezzo.sdk.barrier import SQLiteBarrierDB
from mezzo.sdk.tx_handlers import BranchCall, Handlers
from mezzo.testing.fixtures import (
    RunningNode,
    free_port,
    spawn_node,
    start_node,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.slow
ENV = {"MEZZO_TX_LEASE": "1", "MEZZO_TX_POLL": "0.05", "MEZZO_ADMIN_TOKEN": "mzo_sdkrestart_" + "z" * 32}


class Recording(Handlers):
    """Handlers that remember every call they answered: (name, op, skipped by the barrier)."""

    def __init__(self, base_url: str | None = None) -> None:
        super().__init__(base_url)
        self.answered: list[tuple[str, str, str]] = []

    async def answer(self, name: str, params: Mapping[str, str], body: bytes,
                     headers: Mapping[str, str]) -> tuple[int, dict[str, Any], str]:
        status, out, media = await super().answer(name, params, body, headers)
        self.answered.append((name, params.get("op", ""), out.get("skipped", "")))
        return status, out, media


@pytest.fixture
async def ledger(tmp_path: Path) -> SQLiteBarrierDB:
    db = SQLiteBarrierDB(tmp_path / "bank.db")
    await db.create_table()
    with sqlite3.connect(db.path) as conn:
        conn.execute("CREATE TABLE ledger (gid TEXT, step TEXT)")
    return db


def effects(db: SQLiteBarrierDB, gid: str | None) -> list[str]:
    with sqlite3.connect(db.path) as conn:
        return [s for (s,) in conn.execute("SELECT step FROM ledger WHERE gid = ? ORDER BY rowid", (gid,))]


def register(handlers: Handlers, db: SQLiteBarrierDB, entered: threading.Event | None = None,
             release: threading.Event | None = None) -> None:
    """Steps a and b; the first call of a waits for ``release`` inside its local transaction."""
    for name in ("a", "b", "a-undo", "b-undo"):
        def write(call: BranchCall, conn: sqlite3.Connection, name: str = name) -> None:
            conn.execute("INSERT INTO ledger VALUES (?, ?)", (call.gid, name))
            if name == "a" and entered is not None and release is not None and not entered.is_set():
                entered.set()
                release.wait(30)

        handlers.handler(name, barrier=db)(write)


async def test_coordinator_killed_mid_call_resumes_and_the_barrier_absorbs_the_duplicate(
        tmp_path: Path, ledger: SQLiteBarrierDB) -> None:
    entered, release = threading.Event(), threading.Event()
    handlers = Recording()
    register(handlers, ledger, entered, release)
    data = tmp_path / "data"
    data.mkdir()
    first = await asyncio.to_thread(spawn_node, data, ENV)
    second: RunningNode | None = None
    try:
        async with Mezzo(first.url, first.token) as client:
            client.tx.handlers = handlers
            async with client.tx.serve():
                async with client.tx.saga(retry_interval=0.05, request_timeout=30) as saga:
                    saga.add(handlers.by_name["a"], handlers.by_name["a-undo"], {})
                    saga.add(handlers.by_name["b"], handlers.by_name["b-undo"], {})
                await wait_for(entered.is_set, 20)  # the coordinator is inside step a's call
                stop_process(first, signal.SIGKILL)
                release.set()  # the first call completes and commits; its answer reaches nobody
                second = await asyncio.to_thread(spawn_node, data, ENV)
                async with Mezzo(second.url, second.token) as restarted:
                    async def finished() -> bool:
                        return (await restarted.tx.get(saga.gid))["status"] == "succeed"  # type: ignore[arg-type]

                    await wait_for(finished, 30)
        assert effects(ledger, saga.gid) == ["a", "b"]  # every business write exactly once
        a_calls = [skipped for name, op, skipped in handlers.answered if name == "a"]
        assert a_calls[-1] == "duplicate" and len(a_calls) >= 2
    finally:
        release.set()
        for running in (first, second):
            if running is not None and running.process is not None and running.process.poll() is None:
                stop_process(running, signal.SIGKILL)


@pytest.fixture
async def txnode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RunningNode]:
    monkeypatch.setenv("MEZZO_TX_POLL", "0.05")
    running = await start_node(tmp_path / "data", store=f"sqlite:///{tmp_path / 'kv.db'}",
                               targets=["transactions", "api"])
    try:
        yield running
    finally:
        await running.node.stop()


async def test_application_restart_on_its_address(txnode: RunningNode, ledger: SQLiteBarrierDB) -> None:
    port = free_port()
    async with txnode.client() as client:
        old = Handlers()
        register(old, ledger)
        client.tx.handlers = old
        async with client.tx.serve(port=port):
            saga = client.tx.saga(retry_interval=0.05, request_timeout=5)
            saga.add(old.by_name["a"], old.by_name["a-undo"], {})
            saga.add(old.by_name["b"], old.by_name["b-undo"], {})
        await saga.submit()  # the application is down: the coordinator's calls fail and are retried

        async def tried() -> bool:
            tx = await client.tx.get(saga.gid)  # type: ignore[arg-type]
            return tx["status"] == "submitted" and tx["attempts"] >= 2

        await wait_for(tried, 20)
        # the application comes back (a new process would register the same handlers at import)
        new = Recording()
        register(new, ledger)
        client.tx.handlers = new
        async with client.tx.serve(port=port):
            await client.tx.retry(saga.gid)  # skip the backoff (else the next round comes a bit later)

            async def finished() -> bool:
                return (await client.tx.get(saga.gid))["status"] == "succeed"  # type: ignore[arg-type]

            await wait_for(finished, 30)
    assert effects(ledger, saga.gid) == ["a", "b"]
    assert [(name, op) for name, op, _ in new.answered] == [("a", "action"), ("b", "action")]
