"""XA resource managers for the application side of an XA global transaction.

A branch handler runs its local work inside an XA transaction named after the global transaction and
the branch, and prepares it (``run``); the coordinator later calls the same URL with ``op=commit`` or
``op=rollback`` (``finish``). ``recover`` resolves branches left prepared by a crash: it lists the
server's in-doubt XA transactions and commits or rolls back each one by asking the coordinator how its
global transaction ended.

MySQL/MariaDB use ``XA START/END/PREPARE/COMMIT/ROLLBACK``; PostgreSQL uses ``PREPARE TRANSACTION`` /
``COMMIT PREPARED`` (the server needs ``max_prepared_transactions`` > 0).
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mezzo.sdk.barrier import acquire

T = TypeVar("T")
PREFIX = "mz"
StatusOf = Callable[[str], Awaitable[str | None]]  # gid -> the global status (None: unknown yet)
_SAFE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
MYSQL_UNKNOWN_XID = 1397  # XAER_NOTA: already committed or rolled back, never prepared, or attached elsewhere
MYSQL_ROLLED_BACK = 1402  # XA_RBROLLBACK: the branch was rolled back already (a rollback's goal)
PG_UNKNOWN_XID = "42704"  # undefined_object: no prepared transaction of that name (already finished)
_ATTACHED_PAUSES = (0.01, 0.05, 0.2)  # how long finish waits for a closing session to let go of its branch
_MYSQL_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


class XaBranchAttached(RuntimeError):
    """A prepared MySQL/MariaDB branch is still attached to the live session that prepared it, so no other
    session can finish it yet (the server answers XAER_NOTA); the coordinator calls again later."""


def xid(gid: str, branch_id: str) -> str:
    """The XA transaction id of one branch: ``mz:GID:BRANCH`` (only characters safe in a literal)."""
    if not _SAFE.match(gid) or not _SAFE.match(branch_id):
        raise ValueError("gid and branch_id must be 1-128 of letters, digits and ._:@-")
    return f"{PREFIX}:{gid}:{branch_id}"


def parse_xid(value: str) -> tuple[str, str] | None:
    parts = value.split(":")
    return (":".join(parts[1:-1]), parts[-1]) if len(parts) >= 3 and parts[0] == PREFIX else None


def decision(status: str | None) -> str | None:
    """What an in-doubt branch of a global transaction in ``status`` must do: commit, rollback or wait."""
    if status in ("succeed", "submitted"):
        return "commit"
    if status in ("failed", "aborting"):
        return "rollback"
    return None  # prepared (the app may still submit) or unknown


def check_mysql_server(version: str) -> None:
    """Refuse servers that roll back a prepared XA transaction when its session ends (MySQL before 5.7.7,
    MariaDB before 10.5): ``MySQLXa.run`` ends the session after ``XA PREPARE``, so on them a prepared
    branch would be lost while the coordinator counts on it."""
    maria = "mariadb" in version.lower()
    found = _MYSQL_VERSION.search(version.removeprefix("5.5.5-") if maria else version)
    if found is None:
        return  # an unknown format (a proxy, a fork): trust it
    have = tuple(int(part) for part in found.groups())
    need = (10, 5, 0) if maria else (5, 7, 7)
    if have < need:
        raise RuntimeError(f"XA branches need {'MariaDB' if maria else 'MySQL'} >= "
                           f"{'.'.join(map(str, need))} (this server is {version}): older servers roll back a "
                           "prepared XA transaction when the session that prepared it ends")


async def end_session(conn: Any) -> None:
    """Close a MySQL connection politely (``COM_QUIT``, so the server detaches a prepared branch before it
    reads another session's ``XA COMMIT``), or at once if that fails. A pool drops a closed connection."""
    quit_ = getattr(conn, "ensure_closed", None)
    if quit_ is not None:
        try:
            await quit_()
        except Exception:  # the plain close below ends the session all the same
            pass
    closed = conn.close()  # a no-op once closed
    if inspect.isawaitable(closed):
        await closed


class MySQLXa:
    """XA on an aiomysql connection (autocommit on: XA statements manage the transaction).

    MariaDB and MySQL (before 8.0.29, or with ``xa_detach_on_prepare`` off) keep a prepared branch attached
    to the session that prepared it until that session ends; until then every other session gets XAER_NOTA
    for it, as for a branch that ended. So ``run`` ends its session after ``XA PREPARE`` (the connection is
    closed, and a pool drops it), and ``finish`` reads XAER_NOTA as "finished already" only when
    ``XA RECOVER`` no longer lists the branch."""

    @staticmethod
    async def run(conn: Any, gid: str, branch_id: str, business: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``business(cursor)`` in the branch's XA transaction and prepare it; closes ``conn``."""
        name = xid(gid, branch_id)
        check_mysql_server(str(getattr(conn, "get_server_info", lambda: "")() or ""))
        async with conn.cursor() as cursor:
            await cursor.execute(f"XA START '{name}'")
            try:
                result = await business(cursor)
                await cursor.execute(f"XA END '{name}'")
            except BaseException:
                try:
                    await cursor.execute(f"XA END '{name}'")
                    await cursor.execute(f"XA ROLLBACK '{name}'")
                except Exception:
                    await end_session(conn)  # the disconnect rolls back an XA transaction not yet prepared
                raise
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(f"XA PREPARE '{name}'")
        finally:
            await end_session(conn)  # prepared or not, detach it: only then can any session finish it
        return result

    @classmethod
    async def finish(cls, conn: Any, gid: str, branch_id: str, op: str) -> None:
        """``op`` commit or rollback; a repeated call (the branch already ended) is a no-op. Raises
        ``XaBranchAttached`` while the branch is prepared in a session that is still open."""
        if op not in ("commit", "rollback"):
            raise ValueError(f"op is commit or rollback, not {op!r}")
        name = xid(gid, branch_id)
        for pause in (*_ATTACHED_PAUSES, None):
            async with conn.cursor() as cursor:
                try:
                    await cursor.execute(f"XA {op.upper()} '{name}'")
                    return
                except Exception as exc:
                    code = getattr(exc, "args", (0,))[0]
                    if op == "rollback" and code == MYSQL_ROLLED_BACK:
                        return
                    if code != MYSQL_UNKNOWN_XID:
                        raise
            if (gid, branch_id) not in await cls.in_doubt(conn):
                return  # no longer prepared anywhere: it ended (or never prepared)
            if pause is None:
                raise XaBranchAttached(f"the XA branch {name} is prepared but still attached to the session "
                                       "that prepared it, which must end before another session can finish it")
            await asyncio.sleep(pause)  # a session closing just now (its disconnect not yet processed)

    @staticmethod
    async def in_doubt(conn: Any) -> list[tuple[str, str]]:
        async with conn.cursor() as cursor:
            await cursor.execute("XA RECOVER")
            rows = await cursor.fetchall()
        found = []
        for row in rows:  # formatID, gtrid_length, bqual_length, data
            data = row[3].decode() if isinstance(row[3], bytes) else str(row[3])
            parsed = parse_xid(data[: int(row[1])])
            if parsed:
                found.append(parsed)
        return found

    @classmethod
    async def recover(cls, conn: Any, status_of: StatusOf) -> dict[str, str]:
        """Commit or roll back every in-doubt branch whose global transaction has decided (a branch still
        attached to a live session is left for the next round)."""
        done = {}
        for gid, branch_id in await cls.in_doubt(conn):
            action = decision(await status_of(gid))
            if action:
                try:
                    await cls.finish(conn, gid, branch_id, action)
                except XaBranchAttached:
                    continue
                done[xid(gid, branch_id)] = action
        return done


class PostgresXa:
    """Two-phase commit on an asyncpg connection: ``PREPARE TRANSACTION`` / ``COMMIT PREPARED``."""

    @staticmethod
    async def run(conn: Any, gid: str, branch_id: str, business: Callable[[Any], Awaitable[T]]) -> T:
        name = xid(gid, branch_id)
        await conn.execute("BEGIN")
        try:
            result = await business(conn)
            await conn.execute(f"PREPARE TRANSACTION '{name}'")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        return result

    @staticmethod
    async def finish(conn: Any, gid: str, branch_id: str, op: str) -> None:
        if op not in ("commit", "rollback"):
            raise ValueError(f"op is commit or rollback, not {op!r}")
        name = xid(gid, branch_id)
        try:
            await conn.execute(f"{'COMMIT' if op == 'commit' else 'ROLLBACK'} PREPARED '{name}'")
        except Exception as exc:
            if getattr(exc, "sqlstate", "") != PG_UNKNOWN_XID:
                raise

    @staticmethod
    async def in_doubt(conn: Any) -> list[tuple[str, str]]:
        """The prepared branches of this database (``pg_prepared_xacts`` lists every database's)."""
        rows = await conn.fetch("SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
                                "AND gid LIKE $1 ORDER BY prepared", f"{PREFIX}:%")
        return [parsed for (name,) in rows if (parsed := parse_xid(name)) is not None]

    @classmethod
    async def recover(cls, conn: Any, status_of: StatusOf) -> dict[str, str]:
        """Commit or roll back every in-doubt branch whose global transaction has decided."""
        done = {}
        for gid, branch_id in await cls.in_doubt(conn):
            action = decision(await status_of(gid))
            if action:
                await cls.finish(conn, gid, branch_id, action)
                done[xid(gid, branch_id)] = action
        return done


class XaResource:
    """A database the XA branches of an application run in, with its connections from ``source``: a pool
    (asyncpg, aiomysql with autocommit on) or an async callable returning a new connection."""

    manager: type[MySQLXa] | type[PostgresXa]

    def __init__(self, source: Any) -> None:
        self.source = source

    async def run(self, gid: str, branch_id: str, business: Callable[[Any], Awaitable[T]]) -> T:
        async with acquire(self.source) as conn:
            return await self.manager.run(conn, gid, branch_id, business)

    async def finish(self, gid: str, branch_id: str, op: str) -> None:
        async with acquire(self.source) as conn:
            await self.manager.finish(conn, gid, branch_id, op)

    async def in_doubt(self) -> list[tuple[str, str]]:
        async with acquire(self.source) as conn:
            return await self.manager.in_doubt(conn)

    async def recover(self, status_of: StatusOf) -> dict[str, str]:
        async with acquire(self.source) as conn:
            return await self.manager.recover(conn, status_of)


class PostgresXaResource(XaResource):
    """PostgreSQL: the XA branch's work gets an asyncpg connection."""

    manager = PostgresXa


class MySQLXaResource(XaResource):
    """MySQL/MariaDB: the XA branch's work gets an aiomysql cursor."""

    manager = MySQLXa
