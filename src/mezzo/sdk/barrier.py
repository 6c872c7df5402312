"""The sub-transaction barrier: run a branch's business code at most once, in the caller's local transaction.

A branch call carries ``gid``, ``trans_type``, ``branch_id`` and ``op``. Before the business code the
barrier inserts a row keyed by them into a table of the same database, in the same transaction:

- a duplicate call finds its row and does nothing (idempotency);
- a cancel/compensate first inserts the row of the try/action it undoes; if that insert succeeds the
  try/action never ran, so the undo does nothing (null compensation) and the late try/action, finding
  its row taken, does nothing either (anti-hanging);
- concurrent duplicates serialize on the unique key: the second waits for the first to commit or roll back.

The row layout is DTM's (``dtm_barrier.barrier``), so DTM's barriers and Mezzo's can share a table.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
UNDOES = {"cancel": "try", "compensate": "action"}
MSG_BRANCH, MSG_OP, MSG_BARRIER = "00", "msg", "01"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")

COLUMNS = "trans_type, gid, branch_id, op, barrier_id, reason"


class DuplicateMessage(Exception):
    """A two-phase message's local transaction ran twice for one gid."""


class MessageRolledBack(Exception):
    """Check-back: the message's local transaction did not commit and now never will (answer FAILURE)."""


def _table(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"barrier table {name!r} is not a plain (schema.)table name")
    return name


def ddl_postgres(table: str = "dtm_barrier.barrier") -> list[str]:
    table = _table(table)
    schema = [f"CREATE SCHEMA IF NOT EXISTS {table.split('.')[0]}"] if "." in table else []
    return [*schema, f"""CREATE TABLE IF NOT EXISTS {table} (
        id bigserial PRIMARY KEY, trans_type varchar(45) NOT NULL DEFAULT '', gid varchar(128) NOT NULL DEFAULT '',
        branch_id varchar(128) NOT NULL DEFAULT '', op varchar(45) NOT NULL DEFAULT '',
        barrier_id varchar(45) NOT NULL DEFAULT '', reason varchar(45) NOT NULL DEFAULT '',
        create_time timestamptz NOT NULL DEFAULT now(), UNIQUE (gid, branch_id, op, barrier_id))"""]


def ddl_mysql(table: str = "dtm_barrier.barrier") -> list[str]:
    table = _table(table)
    schema = [f"CREATE DATABASE IF NOT EXISTS {table.split('.')[0]}"] if "." in table else []
    return [*schema, f"""CREATE TABLE IF NOT EXISTS {table} (
        id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY, trans_type varchar(45) NOT NULL DEFAULT '',
        gid varchar(128) NOT NULL DEFAULT '', branch_id varchar(128) NOT NULL DEFAULT '',
        op varchar(45) NOT NULL DEFAULT '', barrier_id varchar(45) NOT NULL DEFAULT '',
        reason varchar(45) NOT NULL DEFAULT '', create_time datetime DEFAULT CURRENT_TIMESTAMP,
        UNIQUE KEY gid (gid, branch_id, op, barrier_id))"""]


def ddl_sqlite(table: str = "dtm_barrier") -> list[str]:
    table = _table(table)
    return [f"""CREATE TABLE IF NOT EXISTS {table} (
        id INTEGER PRIMARY KEY AUTOINCREMENT, trans_type TEXT NOT NULL DEFAULT '', gid TEXT NOT NULL DEFAULT '',
        branch_id TEXT NOT NULL DEFAULT '', op TEXT NOT NULL DEFAULT '', barrier_id TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '', create_time TEXT DEFAULT CURRENT_TIMESTAMP,
        UNIQUE (gid, branch_id, op, barrier_id))"""]


class Barrier:
    """One branch call's barrier; ``Barrier.from_params(request.query_params)`` in a branch handler."""

    def __init__(self, trans_type: str, gid: str, branch_id: str, op: str) -> None:
        if not gid or not op:
            raise ValueError("a barrier needs the call's gid and op")
        self.trans_type, self.gid, self.branch_id, self.op = trans_type, gid, branch_id, op
        self._serial = 0
        self.skipped = ""  # why the last call did nothing: "duplicate", "null compensation" (or "")

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Barrier:
        return cls(params.get("trans_type", ""), params.get("gid", ""), params.get("branch_id", ""),
                   params.get("op", ""))

    def _rows(self) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
        """The rows to insert: the undone op's (for cancel/compensate), then this op's."""
        self._serial += 1
        barrier_id = f"{self._serial:02d}"
        origin = UNDOES.get(self.op)
        first = (self.trans_type, self.gid, self.branch_id, origin, barrier_id, self.op) if origin else None
        return first, (self.trans_type, self.gid, self.branch_id, self.op, barrier_id, self.op)

    def _skip(self, origin_inserted: int, current_inserted: int) -> bool:
        if self.op == MSG_OP and current_inserted == 0:
            raise DuplicateMessage(f"the local transaction of message {self.gid} already ran")
        if self.op in UNDOES and origin_inserted > 0:
            self.skipped = "null compensation"
        elif current_inserted == 0:
            self.skipped = "duplicate"
        else:
            self.skipped = ""
        return bool(self.skipped)

    # PostgreSQL (asyncpg) ----------------------------------------------------------------

    async def call_postgres(self, conn: Any, business: Callable[[Any], Awaitable[T]],
                            table: str = "dtm_barrier.barrier") -> T | None:
        """Run ``business(conn)`` guarded by the barrier in one transaction on an asyncpg connection."""
        sql = f"INSERT INTO {_table(table)} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
        origin, current = self._rows()
        async with conn.transaction():
            first = _count(await conn.execute(sql, *origin)) if origin else 0
            second = _count(await conn.execute(sql, *current))
            if self._skip(first, second):
                return None
            return await business(conn)

    async def query_prepared_postgres(self, conn: Any, table: str = "dtm_barrier.barrier") -> None:
        """Answer a message check-back: returns when the local transaction committed, else raises
        MessageRolledBack (and makes sure it never commits later)."""
        table = _table(table)
        await conn.execute(f"INSERT INTO {table} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                           self.trans_type or "msg", self.gid, MSG_BRANCH, MSG_OP, MSG_BARRIER, "rollback")
        reason = await conn.fetchval(f"SELECT reason FROM {table} WHERE gid = $1 AND branch_id = $2 AND op = $3 "
                                     "AND barrier_id = $4", self.gid, MSG_BRANCH, MSG_OP, MSG_BARRIER)
        if reason == "rollback":
            raise MessageRolledBack(self.gid)

    # MySQL / MariaDB (aiomysql) ----------------------------------------------------------

    async def call_mysql(self, conn: Any, business: Callable[[Any], Awaitable[T]],
                         table: str = "dtm_barrier.barrier") -> T | None:
        """The same on an aiomysql connection (autocommit off): ``business(cursor)`` in one transaction."""
        sql = f"INSERT IGNORE INTO {_table(table)} ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"
        origin, current = self._rows()
        await conn.begin()
        try:
            async with conn.cursor() as cursor:
                first = await cursor.execute(sql, origin) if origin else 0
                second = await cursor.execute(sql, current)
                result = None if self._skip(first, second) else await business(cursor)
            await conn.commit()
            return result
        except BaseException:
            await conn.rollback()
            raise

    async def query_prepared_mysql(self, conn: Any, table: str = "dtm_barrier.barrier") -> None:
        table = _table(table)
        async with conn.cursor() as cursor:
            await cursor.execute(f"INSERT IGNORE INTO {table} ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                                 (self.trans_type or "msg", self.gid, MSG_BRANCH, MSG_OP, MSG_BARRIER, "rollback"))
            await conn.commit()
            await cursor.execute(f"SELECT reason FROM {table} WHERE gid = %s AND branch_id = %s AND op = %s "
                                 "AND barrier_id = %s", (self.gid, MSG_BRANCH, MSG_OP, MSG_BARRIER))
            row = await cursor.fetchone()
            await conn.commit()  # end the read's transaction: it would hold metadata locks
        if row and row[0] == "rollback":
            raise MessageRolledBack(self.gid)

    # SQLite (sqlite3, blocking) ----------------------------------------------------------

    def call_sqlite(self, conn: sqlite3.Connection, business: Callable[[sqlite3.Connection], T],
                    table: str = "dtm_barrier") -> T | None:
        """The same on a sqlite3 connection; the write lock is taken first, so duplicates queue behind it."""
        sql = f"INSERT OR IGNORE INTO {_table(table)} ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
        origin, current = self._rows()
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
        try:
            first = conn.execute(sql, origin).rowcount if origin else 0
            second = conn.execute(sql, current).rowcount
            result = None if self._skip(first, second) else business(conn)
            conn.commit()
            return result
        except BaseException:
            conn.rollback()
            raise

    def query_prepared_sqlite(self, conn: sqlite3.Connection, table: str = "dtm_barrier") -> None:
        table = _table(table)
        with conn:
            conn.execute(f"INSERT OR IGNORE INTO {table} ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                         (self.trans_type or "msg", self.gid, MSG_BRANCH, MSG_OP, MSG_BARRIER, "rollback"))
        row = conn.execute(f"SELECT reason FROM {table} WHERE gid = ? AND branch_id = ? AND op = ? AND barrier_id = ?",
                           (self.gid, MSG_BRANCH, MSG_OP, MSG_BARRIER)).fetchone()
        if row and row[0] == "rollback":
            raise MessageRolledBack(self.gid)


def message_barrier(gid: str) -> Barrier:
    """The barrier a two-phase message's local transaction runs under (checked back by ``query_prepared_*``)."""
    return Barrier("msg", gid, MSG_BRANCH, MSG_OP)


def _count(status: str) -> int:
    """Rows inserted, from asyncpg's command status (``INSERT 0 1``)."""
    return int(status.rsplit(" ", 1)[-1])


# Databases a barrier runs in, for in-process handlers (``mezzo.sdk.tx_handlers``) ---------------

@contextlib.asynccontextmanager
async def acquire(source: Any) -> AsyncIterator[Any]:
    """A connection from ``source``: a pool with ``acquire()`` (asyncpg, aiomysql) or an async
    callable returning a new connection (closed afterwards)."""
    if hasattr(source, "acquire"):
        async with source.acquire() as conn:
            yield conn
        return
    conn = await source()
    try:
        yield conn
    finally:
        closed = conn.close()
        if inspect.isawaitable(closed):
            await closed


class BarrierDB:
    """Where a handler's barrier rows and business writes live; ``guard`` runs ``business(conn)``
    under the barrier in one local transaction (None, with ``barrier.skipped`` set, when skipped)."""

    sync_business = False  # True: business is a plain function run in a worker thread (SQLite)
    table = ""

    async def guard(self, barrier: Barrier, business: Callable[[Any], Any]) -> Any:
        raise NotImplementedError

    async def query_prepared(self, gid: str) -> None:
        """Answer a two-phase message's check-back (raises MessageRolledBack)."""
        raise NotImplementedError

    async def create_table(self) -> None:
        raise NotImplementedError


class PostgresBarrierDB(BarrierDB):
    """An asyncpg pool (or ``async () -> connection``) holding the barrier table."""

    def __init__(self, source: Any, table: str = "dtm_barrier.barrier") -> None:
        self.source, self.table = source, _table(table)

    async def guard(self, barrier: Barrier, business: Callable[[Any], Any]) -> Any:
        async with acquire(self.source) as conn:
            return await barrier.call_postgres(conn, business, self.table)

    async def query_prepared(self, gid: str) -> None:
        async with acquire(self.source) as conn:
            await message_barrier(gid).query_prepared_postgres(conn, self.table)

    async def create_table(self) -> None:
        async with acquire(self.source) as conn:
            for statement in ddl_postgres(self.table):
                await conn.execute(statement)


class MySQLBarrierDB(BarrierDB):
    """An aiomysql pool (or ``async () -> connection``) holding the barrier table; business gets a cursor."""

    def __init__(self, source: Any, table: str = "dtm_barrier.barrier") -> None:
        self.source, self.table = source, _table(table)

    async def guard(self, barrier: Barrier, business: Callable[[Any], Any]) -> Any:
        async with acquire(self.source) as conn:
            return await barrier.call_mysql(conn, business, self.table)

    async def query_prepared(self, gid: str) -> None:
        async with acquire(self.source) as conn:
            await message_barrier(gid).query_prepared_mysql(conn, self.table)

    async def create_table(self) -> None:
        async with acquire(self.source) as conn, conn.cursor() as cursor:
            for statement in ddl_mysql(self.table):
                await cursor.execute(statement)
            await conn.commit()


class SQLiteBarrierDB(BarrierDB):
    """A SQLite file; the business code is a plain function ``business(conn)`` run in a worker thread."""

    sync_business = True

    def __init__(self, path: str | Path, table: str = "dtm_barrier", timeout: float = 30.0) -> None:
        self.path, self.table, self.timeout = str(path), _table(table), timeout

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=self.timeout)

    async def guard(self, barrier: Barrier, business: Callable[[Any], Any]) -> Any:
        def run() -> Any:
            with contextlib.closing(self.connect()) as conn:
                return barrier.call_sqlite(conn, business, self.table)

        return await asyncio.to_thread(run)

    async def query_prepared(self, gid: str) -> None:
        def run() -> None:
            with contextlib.closing(self.connect()) as conn:
                message_barrier(gid).query_prepared_sqlite(conn, self.table)

        await asyncio.to_thread(run)

    async def create_table(self) -> None:
        def run() -> None:
            with contextlib.closing(self.connect()) as conn, conn:
                for statement in ddl_sqlite(self.table):
                    conn.execute(statement)

        await asyncio.to_thread(run)
