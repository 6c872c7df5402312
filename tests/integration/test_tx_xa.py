"""XA on MariaDB/MySQL (and PostgreSQL, on a private cluster that allows prepared transactions): branches prepare their
local XA transaction, the coordinator commits or rolls them back, and in-doubt branches are recovered."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mezzo.sdk.errors import NotFound
from mezzo.sdk.tx import BranchFailed
from mezzo.testing.fixtures import RunningNode, wait_for
from mezzo.testing.pgcluster import PgCluster, cluster_for_tests
from mezzo.transactions.xa import MySQLXa, MySQLXaResource, PostgresXa, XaBranchAttached, xid

aiomysql = pytest.importorskip("aiomysql")
MYSQL = os.environ.get("MEZZO_TEST_MYSQL", "127.0.0.1:3306")


async def connect() -> Any:
    host, _, port = MYSQL.partition(":")
    return await aiomysql.connect(host=host, port=int(port or 3306), user="root", password="", db="test",
                                  autocommit=True)


@pytest.fixture
async def accounts(unique: str) -> AsyncIterator[str]:
    try:
        conn = await connect()
    except Exception as exc:
        if os.environ.get("MEZZO_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"MySQL/MariaDB is not reachable ({exc})")
        pytest.skip(f"MySQL/MariaDB is not reachable ({exc})")
    table = f"accounts_{unique}"
    async with conn.cursor() as cursor:
        await cursor.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, balance int) ENGINE=InnoDB")
        await cursor.execute(f"INSERT INTO {table} VALUES (1, 100), (2, 0)")
    try:
        yield table
    finally:
        async with conn.cursor() as cursor:
            for gid, branch in await MySQLXa.in_doubt(conn):
                await MySQLXa.finish(conn, gid, branch, "rollback")
            await cursor.execute(f"DROP TABLE IF EXISTS {table}")
        conn.close()


async def balances(table: str) -> dict[int, int]:
    conn = await connect()
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(f"SELECT id, balance FROM {table}")
            return dict(await cursor.fetchall())
    finally:
        conn.close()


@pytest.fixture
async def bank(accounts: str) -> AsyncIterator[str]:
    """``POST /move?account=&delta=`` as an XA branch over the accounts table."""
    async def move(request: Request) -> JSONResponse:
        p = request.query_params
        body = await request.json()
        conn = await connect()
        try:
            if p["op"] == "action":
                if body.get("fail"):
                    return JSONResponse({"dtm_result": "FAILURE"}, status_code=409)

                async def work(cursor: Any) -> None:
                    await cursor.execute(f"UPDATE {accounts} SET balance = balance + %s WHERE id = %s",
                                         (body["delta"], body["account"]))

                await MySQLXa.run(conn, p["gid"], p["branch_id"], work)
            else:
                await MySQLXa.finish(conn, p["gid"], p["branch_id"], p["op"])
        finally:
            conn.close()
        return JSONResponse({"dtm_result": "SUCCESS"})

    app = Starlette(routes=[Route("/move", move, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_for(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/move"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()


async def test_xa_commits_every_branch(node: RunningNode, bank: str, accounts: str) -> None:
    async with node.client() as client:
        async with client.tx.xa(retry_interval=0.05) as xa:
            await xa.call(bank, {"account": 1, "delta": -30})
            await xa.call(bank, {"account": 2, "delta": 30})
            assert await balances(accounts) == {1: 100, 2: 0}  # prepared, not visible yet
        await wait_for(lambda: _status(client, xa.gid, "succeed"))
    assert await balances(accounts) == {1: 70, 2: 30}


async def test_xa_rolls_back_when_a_branch_fails(node: RunningNode, bank: str, accounts: str) -> None:
    async with node.client() as client:
        with pytest.raises(BranchFailed):
            async with client.tx.xa(retry_interval=0.05) as xa:
                await xa.call(bank, {"account": 1, "delta": -30})
                await xa.call(bank, {"account": 2, "delta": 30, "fail": True})
        await wait_for(lambda: _status(client, xa.gid, "failed"))
    assert await balances(accounts) == {1: 100, 2: 0}
    conn = await connect()
    try:
        assert [d for d in await MySQLXa.in_doubt(conn) if d[0] == xa.gid] == []
    finally:
        conn.close()


async def test_in_doubt_branches_are_recovered(node: RunningNode, accounts: str) -> None:
    def debit(account: int) -> Any:
        async def work(cursor: Any) -> None:
            await cursor.execute(f"UPDATE {accounts} SET balance = balance - 10 WHERE id = %s", (account,))
        return work

    async with node.client() as client:
        won = (await client.tx.create({"mode": "xa", "prepare": True}))["gid"]
        lost = (await client.tx.create({"mode": "xa", "prepare": True}))["gid"]
        for account, gid in enumerate((won, lost), 1):  # prepared, then the app "crashes": its connection goes
            conn = await connect()
            await MySQLXa.run(conn, gid, "01", debit(account))
            conn.close()
        await client.tx.submit(won)
        await client.tx.abort(lost)

        async def status_of(gid: str) -> str | None:  # None: not ours (other tests share the server's XA list)
            try:
                return (await client.tx.get(gid))["status"]  # type: ignore[no-any-return]
            except NotFound:
                return None

        conn = await connect()
        try:
            done = await MySQLXa.recover(conn, status_of)
        finally:
            conn.close()
    assert done[xid(won, "01")] == "commit" and done[xid(lost, "01")] == "rollback"
    assert await balances(accounts) == {1: 90, 2: 0}


@pytest.fixture
async def own_db(unique: str) -> AsyncIterator[tuple[Any, str]]:
    """A pool (as an application holds one) on a database of this test's own, with accounts 1: 100, 2: 0."""
    host, _, port = MYSQL.partition(":")
    try:
        pool = await aiomysql.create_pool(host=host, port=int(port or 3306), user="root", password="",
                                          autocommit=True, minsize=1, maxsize=4)
    except Exception as exc:
        if os.environ.get("MEZZO_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"MySQL/MariaDB is not reachable ({exc})")
        pytest.skip(f"MySQL/MariaDB is not reachable ({exc})")
    db = f"mz_xa_{unique}"
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute(f"CREATE DATABASE {db}")
        await cursor.execute(f"CREATE TABLE {db}.accounts (id int PRIMARY KEY, balance int) ENGINE=InnoDB")
        await cursor.execute(f"INSERT INTO {db}.accounts VALUES (1, 100), (2, 0)")
    try:
        yield pool, db
    finally:
        async with pool.acquire() as conn, conn.cursor() as cursor:
            for gid, branch in await MySQLXa.in_doubt(conn):  # the branches of this test's gids only
                if unique in gid:
                    await MySQLXa.finish(conn, gid, branch, "rollback")
            await cursor.execute("SET SESSION lock_wait_timeout = 10")  # a branch left prepared: fail, not hang
            await cursor.execute(f"DROP DATABASE IF EXISTS {db}")
        pool.close()
        await pool.wait_closed()


async def own_balances(pool: Any, db: str) -> dict[int, int]:
    async with pool.acquire() as conn, conn.cursor() as cursor:
        await cursor.execute(f"SELECT id, balance FROM {db}.accounts")
        return dict(await cursor.fetchall())


def debit(db: str, account: int, amount: int) -> Any:
    async def work(cursor: Any) -> None:
        await cursor.execute(f"UPDATE {db}.accounts SET balance = balance - %s WHERE id = %s", (amount, account))
    return work


async def test_a_pooled_branch_is_committed_at_once_by_another_session(own_db: tuple[Any, str],
                                                                       unique: str) -> None:
    """The coordinator's commit may come straight after the prepare, on another pooled session: the server
    must have detached the branch from the session that prepared it (it answers XAER_NOTA until then), and
    that answer must never pass for "committed already" while the branch is still prepared."""
    pool, db = own_db
    resource = MySQLXaResource(pool)
    for n in range(5):
        gid = f"xa-pool-{unique}-{n}"
        async with pool.acquire(), pool.acquire():
            pass  # two open sessions in the pool: the commit gets one at once, as in a busy application
        await resource.run(gid, "01", debit(db, 1, 10))
        await resource.finish(gid, "01", "commit")
        assert [d for d in await resource.in_doubt() if d[0] == gid] == []
    assert await own_balances(pool, db) == {1: 50, 2: 0}


async def test_a_branch_attached_to_a_live_session_is_not_taken_for_finished(own_db: tuple[Any, str],
                                                                             unique: str) -> None:
    pool, db = own_db
    gid, name = f"xa-live-{unique}", xid(f"xa-live-{unique}", "01")
    holder = await connect()  # prepares and stays open, as a pool that kept the connection would
    try:
        async with holder.cursor() as cursor:
            for statement in (f"XA START '{name}'", f"UPDATE {db}.accounts SET balance = 0 WHERE id = 1",
                              f"XA END '{name}'", f"XA PREPARE '{name}'"):
                await cursor.execute(statement)
        async with pool.acquire() as conn:
            with pytest.raises(XaBranchAttached):
                await MySQLXa.finish(conn, gid, "01", "commit")
            assert await MySQLXa.recover(conn, lambda _: _const("succeed")) == {}  # left for the next round
            assert (gid, "01") in await MySQLXa.in_doubt(conn)
    finally:
        await holder.ensure_closed()
    async with pool.acquire() as conn:
        await MySQLXa.finish(conn, gid, "01", "commit")  # the session ended: now it can be committed
        await MySQLXa.finish(conn, gid, "01", "commit")  # and a repeat is a no-op
    assert await own_balances(pool, db) == {1: 0, 2: 0}


async def test_run_ends_its_session_and_rolls_back_a_failed_business(own_db: tuple[Any, str], unique: str) -> None:
    pool, db = own_db
    conn = await connect()
    try:
        await MySQLXa.run(conn, f"xa-run-{unique}", "01", debit(db, 1, 10))
        assert conn.closed  # prepared: the session ended so that any other one can finish the branch
    finally:
        conn.close()

    async def fails(cursor: Any) -> None:
        await debit(db, 2, 10)(cursor)
        raise LookupError("no such customer")

    conn = await connect()
    try:
        with pytest.raises(LookupError):
            await MySQLXa.run(conn, f"xa-run-{unique}", "02", fails)
        assert not conn.closed  # rolled back, nothing prepared: the connection stays usable
        assert [d for d in await MySQLXa.in_doubt(conn) if d[0] == f"xa-run-{unique}"] == [
            (f"xa-run-{unique}", "01")]
    finally:
        conn.close()
    async with pool.acquire() as conn:  # the prepared branch must not outlive the test (it holds row locks)
        await MySQLXa.finish(conn, f"xa-run-{unique}", "01", "rollback")
    assert await own_balances(pool, db) == {1: 100, 2: 0}


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster with prepared transactions enabled (the shared server has none)."""
    yield from cluster_for_tests()


async def test_postgres_prepared_transactions(pg_cluster: PgCluster, unique: str) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    conn = await asyncpg.connect(pg_cluster.url)
    try:
        assert int(await conn.fetchval("SHOW max_prepared_transactions")) > 0
        await conn.execute(f"CREATE TABLE xa_{unique} (v int)")
        await PostgresXa.run(conn, "pg-gid", "01", lambda c: c.execute(f"INSERT INTO xa_{unique} VALUES (1)"))
        await PostgresXa.run(conn, "pg-gid-2", "01", lambda c: c.execute(f"INSERT INTO xa_{unique} VALUES (2)"))
        assert await conn.fetchval(f"SELECT count(*) FROM xa_{unique}") == 0
        assert await PostgresXa.in_doubt(conn) == [("pg-gid", "01"), ("pg-gid-2", "01")]
        decided = {"pg-gid": "succeed", "pg-gid-2": "aborting"}
        assert await PostgresXa.recover(conn, lambda gid: _const(decided[gid])) == {
            xid("pg-gid", "01"): "commit", xid("pg-gid-2", "01"): "rollback"}
        assert await conn.fetchval(f"SELECT array_agg(v) FROM xa_{unique}") == [1]
        await PostgresXa.finish(conn, "pg-gid", "01", "commit")  # a repeated decision is a no-op
        await PostgresXa.finish(conn, "pg-gid-2", "01", "rollback")
        assert await PostgresXa.in_doubt(conn) == []
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS xa_{unique}")
        await conn.close()


async def _const(value: str) -> str:
    return value


async def _status(client: Any, gid: str | None, wanted: str) -> bool:
    return (await client.tx.get(gid))["status"] == wanted  # type: ignore[no-any-return]
