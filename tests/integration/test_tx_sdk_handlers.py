"""In-process branch handlers against a running coordinator: sagas, TCC with decorators and two-phase
messages whose branches are Python functions of this process, with the barrier on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mezzo.sdk.barrier import BarrierDB, PostgresBarrierDB, SQLiteBarrierDB
from mezzo.sdk.tx import BranchFailed
from mezzo.sdk.tx_handlers import BranchCall, BranchFailure, Handlers
from mezzo.storage.postgres import split_schema
from mezzo.testing.fixtures import RunningNode, start_node, wait_for

FAST = {"retry_interval": 0.05, "request_timeout": 5}


@pytest.fixture(autouse=True)
def fast_recovery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEZZO_TX_POLL", "0.05")
    monkeypatch.setenv("MEZZO_TX_LEASE", "2")


@pytest.fixture
async def txnode(tmp_path: Path) -> AsyncIterator[RunningNode]:
    running = await start_node(tmp_path / "data", store=f"sqlite:///{tmp_path / 'kv.db'}",
                               targets=["transactions", "api"])
    try:
        yield running
    finally:
        await running.node.stop()


class Bank:
    """A barrier database plus a ``ledger`` of business writes, and ``write`` as the business code of a
    handler in the form that database wants (plain for SQLite, async for PostgreSQL)."""

    db: BarrierDB
    write: Callable[..., Any]

    async def effects(self, gid: str) -> list[tuple[str, str]]: ...


class SQLiteBank(Bank):
    def __init__(self, path: Path) -> None:
        self.db = SQLiteBarrierDB(path)
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE ledger (gid TEXT, branch TEXT, op TEXT)")

        def write(call: BranchCall, conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO ledger VALUES (?, ?, ?)", (call.gid, call.branch_id, call.op))
            if (call.payload or {}).get("fail") == call.op:
                raise BranchFailure(f"{call.op} refused")

        self.write = write

    async def effects(self, gid: str) -> list[tuple[str, str]]:
        with sqlite3.connect(self.db.path) as conn:  # type: ignore[attr-defined]
            return conn.execute("SELECT branch, op FROM ledger WHERE gid = ? ORDER BY rowid", (gid,)).fetchall()


class PostgresBank(Bank):
    def __init__(self, pool: Any, schema: str) -> None:
        self.pool, self.ledger = pool, f"{schema}.ledger"
        self.db = PostgresBarrierDB(pool, f"{schema}.barrier")

        async def write(call: BranchCall, conn: Any) -> None:
            await conn.execute(f"INSERT INTO {self.ledger} (gid, branch, op) VALUES ($1, $2, $3)",
                               call.gid, call.branch_id, call.op)
            if (call.payload or {}).get("fail") == call.op:
                raise BranchFailure(f"{call.op} refused")

        self.write = write

    async def effects(self, gid: str) -> list[tuple[str, str]]:
        rows = await self.pool.fetch(f"SELECT branch, op FROM {self.ledger} WHERE gid = $1 ORDER BY id", gid)
        return [tuple(r) for r in rows]  # type: ignore[misc]


@pytest.fixture(params=["sqlite", "postgres"])
def bank_url(request: pytest.FixtureRequest) -> str:
    """Where the bank lives: SQLite, or a fresh schema of the shared PostgreSQL (skips when absent)."""
    return "sqlite" if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def bank(bank_url: str, tmp_path: Path) -> AsyncIterator[Bank]:
    if bank_url == "sqlite":
        sqlite_bank = SQLiteBank(tmp_path / "bank.db")
        await sqlite_bank.db.create_table()
        yield sqlite_bank
        return
    import asyncpg

    dsn, schema = split_schema(bank_url)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        await pool.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await pool.execute(f"CREATE TABLE {schema}.ledger (id serial PRIMARY KEY, gid text, branch text, op text)")
        postgres_bank = PostgresBank(pool, str(schema))
        await postgres_bank.db.create_table()
        yield postgres_bank
    finally:
        await pool.close()


@pytest.fixture
async def app(txnode: RunningNode) -> AsyncIterator[Any]:
    """The application: a client whose handlers are served on a free port."""
    async with txnode.client() as client, client.tx.serve():
        yield client


async def ended(client: Any, gid: str | None, timeout: float = 20) -> dict[str, Any]:
    async def final() -> dict[str, Any] | None:
        tx = await client.tx.get(gid)
        return tx if tx["status"] in ("succeed", "failed") else None

    return await wait_for(final, timeout)  # type: ignore[no-any-return]


def saga_handlers(handlers: Handlers, bank: Bank) -> dict[str, Any]:
    return {name: handlers.handler(name, barrier=bank.db)(bank.write)
            for name in ("debit", "debit-undo", "credit", "credit-undo")}


async def test_saga_calls_in_process_handlers(app: Any, bank: Bank) -> None:
    h = saga_handlers(app.tx.handlers, bank)
    async with app.tx.saga(**FAST) as saga:
        saga.add(h["debit"], h["debit-undo"], {"amount": 30})
        saga.add(h["credit"], h["credit-undo"], {"amount": 30})
    assert saga.steps[0]["action"] == f"{app.tx.handlers.base_url}/debit"
    assert (await ended(app, saga.gid))["status"] == "succeed"
    assert await bank.effects(saga.gid) == [("01", "action"), ("02", "action")]


async def test_saga_failure_compensates_through_the_barrier(app: Any, bank: Bank) -> None:
    h = saga_handlers(app.tx.handlers, bank)
    async with app.tx.saga(**FAST) as saga:
        saga.add(h["debit"], h["debit-undo"], {"amount": 30})
        saga.add(h["credit"], h["credit-undo"], {"fail": "action"})
    tx = await ended(app, saga.gid)
    assert tx["status"] == "failed"
    # the failed action rolled back with its barrier row, so its compensation was a null compensation
    assert await bank.effects(saga.gid) == [("01", "action"), ("01", "compensate")]


def tcc_branch(handlers: Handlers, name: str, bank: Bank) -> Any:
    branch = handlers.tcc(name, barrier=bank.db)
    branch.try_(bank.write)
    branch.confirm(bank.write)
    branch.cancel(bank.write)
    return branch


async def test_tcc_decorators_try_here_confirm_from_the_coordinator(app: Any, bank: Bank) -> None:
    out, into = tcc_branch(app.tx.handlers, "out", bank), tcc_branch(app.tx.handlers, "in", bank)
    async with app.tx.tcc(**FAST) as tcc:
        await tcc.call_branch(out, {"amount": 30})
        await tcc.call_branch(into, {"amount": 30})
        assert await bank.effects(tcc.gid) == [("01", "try"), ("02", "try")]
    assert (await ended(app, tcc.gid))["status"] == "succeed"
    effects = await bank.effects(tcc.gid)
    assert sorted(effects[2:]) == [("01", "confirm"), ("02", "confirm")] and len(effects) == 4


async def test_tcc_failed_try_cancels_every_branch(app: Any, bank: Bank) -> None:
    out, into = tcc_branch(app.tx.handlers, "out", bank), tcc_branch(app.tx.handlers, "in", bank)
    with pytest.raises(BranchFailed, match="try refused"):
        async with app.tx.tcc(**FAST) as tcc:
            await tcc.call_branch(out, {"amount": 30})
            await tcc.call_branch(into, {"fail": "try"})
    assert (await ended(app, tcc.gid))["status"] == "failed"
    # branch 02's Try rolled back, so its Cancel found nothing to undo (null compensation)
    assert await bank.effects(tcc.gid) == [("01", "try"), ("01", "cancel")]


async def test_message_with_handler_steps_and_check_back(app: Any, bank: Bank, txnode: RunningNode) -> None:
    notified: list[Any] = []

    @app.tx.handler("notify")
    async def notify(call: BranchCall) -> None:
        notified.append((call.gid, call.payload))

    check = app.tx.check_back("check", bank.db)
    local = bank.write  # the local transaction: a ledger row under the message's barrier

    async with app.tx.message(check, **FAST) as msg:
        msg.add(notify, {"order": 7})
        await msg.local(bank.db, lambda conn: local(_msg_call(msg.gid), conn))
    assert (await ended(app, msg.gid))["status"] == "succeed"
    assert notified == [(msg.gid, {"order": 7})]

    # the app "dies" after its local transaction, before submitting: the coordinator checks back
    crashed = app.tx.message(check, **FAST)
    crashed.add(notify, {"order": 8})
    await crashed.local(bank.db, lambda conn: local(_msg_call(crashed.gid), conn))
    assert (await ended(app, crashed.gid))["status"] == "succeed"
    # ... and dies before its local transaction: the check-back makes sure it never commits
    lost = app.tx.message(check, **FAST)
    lost.add(notify, {"order": 9})
    await lost.prepare()
    assert (await ended(app, lost.gid))["status"] == "failed"
    assert [gid for gid, _ in notified] == [msg.gid, crashed.gid]
    assert await bank.effects(lost.gid) == []


def _msg_call(gid: str | None) -> BranchCall:
    return BranchCall(gid or "", "msg", "00", "msg", {})


async def test_sync_client_serves_handlers_too(txnode: RunningNode) -> None:
    import asyncio
    import time

    from mezzo import MezzoSync

    def application() -> tuple[list[str], str]:
        seen: list[str] = []
        with MezzoSync(txnode.url, txnode.token) as client:
            @client.tx.handler("step")
            def step(call: BranchCall) -> None:
                seen.append(call.op)

            with client.tx.serve():
                with client.tx.saga(**FAST) as saga:
                    saga.add(step, "", {"n": 1})
                deadline = time.monotonic() + 20
                while (status := client.tx.get(saga.gid)["status"]) != "succeed" and time.monotonic() < deadline:
                    time.sleep(0.05)
        return seen, status

    seen, status = await asyncio.to_thread(application)
    assert status == "succeed" and seen == ["action"]
