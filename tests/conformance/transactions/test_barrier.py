"""The sub-transaction barrier on SQLite, PostgreSQL and MySQL/MariaDB: idempotency, null compensation,
anti-hanging, message check-back, and a property test with concurrent duplicate calls."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mezzo.sdk.barrier import (
    Barrier,
    DuplicateMessage,
    MessageRolledBack,
    ddl_mysql,
    ddl_postgres,
    ddl_sqlite,
    message_barrier,
)
from mezzo.testing import backends

MYSQL = os.environ.get("MEZZO_TEST_MYSQL", "127.0.0.1:3306")


class Boom(Exception):
    pass


class Engine:
    """One database with a barrier table and an ``effects`` table the business code writes to."""

    async def call(self, barrier: Barrier, fail: bool = False) -> Any: ...
    async def effects(self, gid: str) -> dict[str, int]: ...
    async def query_prepared(self, gid: str) -> None: ...


class SQLiteEngine(Engine):
    def __init__(self, path: Path) -> None:
        self.path = path
        with self._connect() as conn:
            for ddl in ddl_sqlite("barrier"):
                conn.execute(ddl)
            conn.execute("CREATE TABLE effects (gid TEXT, op TEXT)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    async def call(self, barrier: Barrier, fail: bool = False) -> Any:
        def run() -> Any:
            conn = self._connect()
            try:
                def business(c: sqlite3.Connection) -> str:
                    c.execute("INSERT INTO effects VALUES (?, ?)", (barrier.gid, barrier.op))
                    if fail:
                        raise Boom
                    return "done"

                return barrier.call_sqlite(conn, business, table="barrier")
            finally:
                conn.close()

        return await asyncio.to_thread(run)

    async def effects(self, gid: str) -> dict[str, int]:
        with self._connect() as conn:
            rows = conn.execute("SELECT op, count(*) FROM effects WHERE gid = ? GROUP BY op", (gid,)).fetchall()
        return dict(rows)

    async def query_prepared(self, gid: str) -> None:
        conn = self._connect()
        try:
            message_barrier(gid).query_prepared_sqlite(conn, table="barrier")
        finally:
            conn.close()


class PostgresEngine(Engine):
    def __init__(self, pool: Any, table: str, effects: str) -> None:
        self.pool, self.table, self.effects_table = pool, table, effects

    async def call(self, barrier: Barrier, fail: bool = False) -> Any:
        async def business(conn: Any) -> str:
            await conn.execute(f"INSERT INTO {self.effects_table} VALUES ($1, $2)", barrier.gid, barrier.op)
            if fail:
                raise Boom
            return "done"

        async with self.pool.acquire() as conn:
            return await barrier.call_postgres(conn, business, table=self.table)

    async def effects(self, gid: str) -> dict[str, int]:
        rows = await self.pool.fetch(f"SELECT op, count(*) FROM {self.effects_table} WHERE gid = $1 GROUP BY op", gid)
        return {r[0]: r[1] for r in rows}

    async def query_prepared(self, gid: str) -> None:
        async with self.pool.acquire() as conn:
            await message_barrier(gid).query_prepared_postgres(conn, table=self.table)


class MySQLEngine(Engine):
    def __init__(self, pool: Any, table: str, effects: str) -> None:
        self.pool, self.table, self.effects_table = pool, table, effects

    async def call(self, barrier: Barrier, fail: bool = False) -> Any:
        async def business(cursor: Any) -> str:
            await cursor.execute(f"INSERT INTO {self.effects_table} VALUES (%s, %s)", (barrier.gid, barrier.op))
            if fail:
                raise Boom
            return "done"

        async with self.pool.acquire() as conn:
            return await barrier.call_mysql(conn, business, table=self.table)

    async def effects(self, gid: str) -> dict[str, int]:
        async with self.pool.acquire() as conn, conn.cursor() as cursor:
            await conn.commit()  # a fresh snapshot
            await cursor.execute(f"SELECT op, count(*) FROM {self.effects_table} WHERE gid = %s GROUP BY op", (gid,))
            rows = await cursor.fetchall()
            await conn.commit()
            return {r[0]: r[1] for r in rows}

    async def query_prepared(self, gid: str) -> None:
        async with self.pool.acquire() as conn:
            await message_barrier(gid).query_prepared_mysql(conn, table=self.table)


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> AsyncIterator[Engine]:
    if request.param == "sqlite":
        yield SQLiteEngine(tmp_path / "barrier.db")
        return
    table, effects = f"barrier_{unique}", f"effects_{unique}"
    if request.param == "postgres":
        import asyncpg

        url = os.environ.get("MEZZO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
        problem = await backends.postgres_problem(url)
        if problem:
            if os.environ.get("MEZZO_REQUIRE_BACKENDS") == "1":
                pytest.fail(f"MEZZO_REQUIRE_BACKENDS=1 but PostgreSQL is not reachable ({problem})", pytrace=False)
            pytest.skip(f"PostgreSQL is not reachable ({problem})")
        pool = await asyncpg.create_pool(url, min_size=1, max_size=12)
        for ddl in ddl_postgres(table):
            await pool.execute(ddl)
        await pool.execute(f"CREATE TABLE {effects} (gid text, op text)")
        try:
            yield PostgresEngine(pool, table, effects)
        finally:
            await pool.execute(f"DROP TABLE IF EXISTS {table}, {effects}")
            await pool.close()
        return
    aiomysql = pytest.importorskip("aiomysql")
    host, _, port = MYSQL.partition(":")
    try:
        pool = await aiomysql.create_pool(host=host, port=int(port or 3306), user="root", password="", db="test",
                                          autocommit=False, minsize=1, maxsize=12)
    except Exception as exc:
        if os.environ.get("MEZZO_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"MySQL/MariaDB is not reachable ({exc})")
        pytest.skip(f"MySQL/MariaDB is not reachable ({exc})")
    async with pool.acquire() as conn, conn.cursor() as cursor:
        for ddl in ddl_mysql(table):
            await cursor.execute(ddl)
        await cursor.execute(f"CREATE TABLE {effects} (gid varchar(128), op varchar(45))")
        await conn.commit()
    try:
        yield MySQLEngine(pool, table, effects)
    finally:
        pool.close()
        await pool.wait_closed()
        conn = await aiomysql.connect(host=host, port=int(port or 3306), user="root", password="", db="test")
        async with conn.cursor() as cursor:
            await cursor.execute(f"DROP TABLE IF EXISTS {table}, {effects}")
        conn.close()


def deadlock(error: object) -> bool:
    return type(error).__name__ == "OperationalError" and getattr(error, "args", (0,))[0] == 1213


def gid() -> str:
    return uuid.uuid4().hex


async def test_duplicate_calls_run_once(engine: Engine) -> None:
    g = gid()
    assert await engine.call(Barrier("saga", g, "01", "action")) == "done"
    again = Barrier("saga", g, "01", "action")
    assert await engine.call(again) is None and again.skipped == "duplicate"
    assert await engine.effects(g) == {"action": 1}


async def test_null_compensation_and_anti_hanging(engine: Engine) -> None:
    g = gid()
    undo = Barrier("saga", g, "01", "compensate")
    assert await engine.call(undo) is None and undo.skipped == "null compensation"
    late = Barrier("saga", g, "01", "action")
    assert await engine.call(late) is None and late.skipped == "duplicate"  # the hanging action is blocked
    assert await engine.effects(g) == {}


async def test_compensation_after_the_action_runs(engine: Engine) -> None:
    g = gid()
    await engine.call(Barrier("tcc", g, "01", "try"))
    assert await engine.call(Barrier("tcc", g, "01", "cancel")) == "done"
    assert await engine.effects(g) == {"try": 1, "cancel": 1}


async def test_failed_business_leaves_no_barrier(engine: Engine) -> None:
    g = gid()
    with pytest.raises(Boom):
        await engine.call(Barrier("saga", g, "01", "action"), fail=True)
    assert await engine.call(Barrier("saga", g, "01", "action")) == "done"  # the retry runs
    assert await engine.effects(g) == {"action": 1}


async def test_message_check_back(engine: Engine) -> None:
    committed, lost = gid(), gid()
    await engine.call(message_barrier(committed))
    await engine.query_prepared(committed)  # committed: no error
    with pytest.raises(DuplicateMessage):
        await engine.call(message_barrier(committed))
    with pytest.raises(MessageRolledBack):
        await engine.query_prepared(lost)  # never ran, and now never will
    with pytest.raises(DuplicateMessage):
        await engine.call(message_barrier(lost))
    assert await engine.effects(lost) == {}


calls = st.lists(st.tuples(st.sampled_from(["action", "compensate"]), st.booleans()), min_size=1, max_size=6)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=calls)
async def test_concurrent_duplicates_keep_the_branch_consistent(engine: Engine,
                                                                calls: list[tuple[str, bool]]) -> None:
    """Any mix of concurrent duplicate actions and compensations (some actions failing) ends with the
    action applied at most once, and undone exactly when a compensation was called."""
    g = gid()
    results = await asyncio.gather(*(engine.call(Barrier("saga", g, "01", op), fail=fail and op == "action")
                                     for op, fail in calls), return_exceptions=True)
    # InnoDB may pick a deadlock victim among concurrent duplicates: rolled back, retried by the coordinator
    assert all(r in ("done", None) or isinstance(r, Boom) or deadlock(r) for r in results), results
    for (op, _), result in zip(calls, results, strict=True):
        if op == "compensate" and deadlock(result):
            await engine.call(Barrier("saga", g, "01", op))  # the coordinator calls a compensation again
    effects = await engine.effects(g)
    assert effects.get("action", 0) <= 1 and effects.get("compensate", 0) <= 1
    if any(op == "compensate" for op, _ in calls):
        assert effects.get("action", 0) == effects.get("compensate", 0)
