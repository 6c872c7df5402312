"""Audit: the SDK's MySQL/MariaDB barrier (``MySQLBarrierDB``) under in-process handlers driven by a
running coordinator — sagas, TCC with decorators, and a two-phase message checked back from the
barrier table — as ``test_tx_sdk_handlers.py`` does for SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from integration.test_tx_sdk_handlers import (  # noqa: F401  (fixtures: the node, the app and fast recovery)
    FAST,
    Bank,
    _msg_call,
    app,
    ended,
    fast_recovery,
    saga_handlers,
    tcc_branch,
    txnode,
)
from integration.test_tx_xa import own_db  # noqa: F401  (a MySQL database of the test's own)
from mezzo.sdk.barrier import MySQLBarrierDB
from mezzo.sdk.tx import BranchFailed
from mezzo.sdk.tx_handlers import BranchCall, BranchFailure


class MySQLBank(Bank):
    """The barrier table and the ledger in a database of the test's own; business code gets a cursor."""

    def __init__(self, pool: Any, database: str) -> None:
        self.pool, self.ledger = pool, f"{database}.ledger"
        self.db = MySQLBarrierDB(pool, f"{database}.barrier")

        async def write(call: BranchCall, cursor: Any) -> None:
            await cursor.execute(f"INSERT INTO {self.ledger} (gid, branch, op) VALUES (%s, %s, %s)",
                                 (call.gid, call.branch_id, call.op))
            if (call.payload or {}).get("fail") == call.op:
                raise BranchFailure(f"{call.op} refused")

        self.write = write

    async def effects(self, gid: str) -> list[tuple[str, str]]:
        async with self.pool.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute(f"SELECT branch, op FROM {self.ledger} WHERE gid = %s ORDER BY id", (gid,))
            return [tuple(row) for row in await cursor.fetchall()]  # type: ignore[misc]


@pytest.fixture
async def bank(own_db: tuple[Any, str]) -> MySQLBank:  # noqa: F811
    """In the database of ``own_db`` (a pool with autocommit on; dropped with the test's tables)."""
    pool, database = own_db
    found = MySQLBank(pool, database)
    await found.db.create_table()
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute(f"CREATE TABLE {found.ledger} (id int AUTO_INCREMENT PRIMARY KEY, "
                             "gid varchar(128), branch varchar(16), op varchar(16)) ENGINE=InnoDB")
    return found


async def test_saga_through_the_mysql_barrier(app: Any, bank: MySQLBank) -> None:  # noqa: F811
    h = saga_handlers(app.tx.handlers, bank)
    async with app.tx.saga(**FAST) as saga:
        saga.add(h["debit"], h["debit-undo"], {"amount": 30})
        saga.add(h["credit"], h["credit-undo"], {"amount": 30})
    assert (await ended(app, saga.gid))["status"] == "succeed"
    assert await bank.effects(saga.gid) == [("01", "action"), ("02", "action")]

    async with app.tx.saga(**FAST) as failing:
        failing.add(h["debit"], h["debit-undo"], {"amount": 30})
        failing.add(h["credit"], h["credit-undo"], {"fail": "action"})
    assert (await ended(app, failing.gid))["status"] == "failed"
    # the failed action rolled back with its barrier row: its compensation was a null compensation
    assert await bank.effects(failing.gid) == [("01", "action"), ("01", "compensate")]


async def test_duplicate_and_hanging_calls_through_the_mysql_barrier(app: Any, bank: MySQLBank) -> None:  # noqa: F811
    """What the coordinator may send after a crash or a timeout: the same call twice, and a compensation
    before (instead of) its action followed by the late action."""
    h = saga_handlers(app.tx.handlers, bank)
    seen = []
    for name, op in (("debit", "action"), ("debit", "action"), ("credit-undo", "compensate"), ("credit", "action")):
        branch = "01" if name == "debit" else "02"
        call = BranchCall("mysql-hanging", "saga", branch, op, {"amount": 5})
        await h[name].run(call)
        seen.append(call.skipped)
    assert seen == ["", "duplicate", "null compensation", "duplicate"]
    assert await bank.effects("mysql-hanging") == [("01", "action")]


async def test_tcc_decorators_through_the_mysql_barrier(app: Any, bank: MySQLBank) -> None:  # noqa: F811
    out, into = tcc_branch(app.tx.handlers, "out", bank), tcc_branch(app.tx.handlers, "in", bank)
    async with app.tx.tcc(**FAST) as tcc:
        await tcc.call_branch(out, {"amount": 30})
        await tcc.call_branch(into, {"amount": 30})
    assert (await ended(app, tcc.gid))["status"] == "succeed"
    effects = await bank.effects(tcc.gid or "")
    assert effects[:2] == [("01", "try"), ("02", "try")]
    assert sorted(effects[2:]) == [("01", "confirm"), ("02", "confirm")]

    with pytest.raises(BranchFailed, match="try refused"):
        async with app.tx.tcc(**FAST) as failing:
            await failing.call_branch(out, {"amount": 30})
            await failing.call_branch(into, {"fail": "try"})
    assert (await ended(app, failing.gid))["status"] == "failed"
    assert await bank.effects(failing.gid or "") == [("01", "try"), ("01", "cancel")]


async def test_message_checked_back_from_the_mysql_barrier(app: Any, bank: MySQLBank) -> None:  # noqa: F811
    notified: list[Any] = []

    @app.tx.handler("notify")
    async def notify(call: BranchCall) -> None:
        notified.append(call.gid)

    check = app.tx.check_back("check", bank.db)
    async with app.tx.message(check, **FAST) as msg:
        msg.add(notify, {"order": 7})
        await msg.local(bank.db, lambda cursor: bank.write(_msg_call(msg.gid), cursor))
    crashed = app.tx.message(check, **FAST)  # the app dies after its local transaction, before submit
    crashed.add(notify, {"order": 8})
    await crashed.local(bank.db, lambda cursor: bank.write(_msg_call(crashed.gid), cursor))
    lost = app.tx.message(check, **FAST)  # ... and before its local transaction
    lost.add(notify, {"order": 9})
    await lost.prepare()
    assert (await ended(app, msg.gid))["status"] == "succeed"
    assert (await ended(app, crashed.gid))["status"] == "succeed"
    assert (await ended(app, lost.gid))["status"] == "failed"
    assert sorted(notified) == sorted([msg.gid, crashed.gid])
    assert await bank.effects(crashed.gid or "") == [("00", "msg")]
    assert await bank.effects(lost.gid or "") == []
    with pytest.raises(Exception, match="already ran"):  # the late local transaction of the lost one
        await lost.local(bank.db, lambda cursor: bank.write(_msg_call(lost.gid), cursor))
    assert await bank.effects(lost.gid or "") == []
