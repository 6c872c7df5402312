"""XA with in-process handlers on PostgreSQL (a private cluster with max_prepared_transactions, since the
shared server has none) and MariaDB: branches prepared here, committed or rolled back by the coordinator,
and in-doubt branches (prepared by a late call, or whose commit never arrived) resolved by recover_xa."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mezzo.sdk.tx import BranchFailed
from mezzo.sdk.tx_handlers import BranchCall, BranchFailure
from mezzo.testing.fixtures import RunningNode, free_port, start_node, wait_for
from mezzo.testing.pgcluster import PgCluster, cluster_for_tests
from mezzo.transactions.xa import MySQLXaResource, PostgresXaResource, XaResource, xid

FAST = {"retry_interval": 0.05, "request_timeout": 5}
MYSQL = os.environ.get("MEZZO_TEST_MYSQL", "127.0.0.1:3306")


def absent(what: str, why: str) -> None:
    if os.environ.get("MEZZO_REQUIRE_BACKENDS") == "1":
        pytest.fail(f"MEZZO_REQUIRE_BACKENDS=1 but {what} is not available ({why})", pytrace=False)
    pytest.skip(f"{what} is not available ({why})")


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster with prepared transactions enabled (the shared server has none)."""
    yield from cluster_for_tests()


class Accounts:
    """Two accounts (1: 100, 2: 0) in a table of its own; ``move`` is an XA handler's local work."""

    resource: XaResource
    table: str
    tag = ""  # in the gids of the test's transactions, so teardown finds their branches

    def gid(self, name: str) -> str:
        return f"xa-sdk-{self.tag}-{name}"

    async def move(self, call: BranchCall, conn: Any) -> None: ...
    async def balances(self) -> dict[int, int]: ...


class PostgresAccounts(Accounts):
    def __init__(self, pool: Any, table: str) -> None:
        self.pool, self.table, self.resource = pool, table, PostgresXaResource(pool)

    async def move(self, call: BranchCall, conn: Any) -> None:
        if call.payload.get("fail"):
            raise BranchFailure("account closed")
        await conn.execute(f"UPDATE {self.table} SET balance = balance + $1 WHERE id = $2",
                           call.payload["delta"], call.payload["account"])

    async def balances(self) -> dict[int, int]:
        return dict(await self.pool.fetch(f"SELECT id, balance FROM {self.table}"))  # type: ignore[arg-type]


class MySQLAccounts(Accounts):
    def __init__(self, pool: Any, table: str) -> None:
        self.pool, self.table, self.resource = pool, table, MySQLXaResource(pool)

    async def move(self, call: BranchCall, cursor: Any) -> None:
        if call.payload.get("fail"):
            raise BranchFailure("account closed")
        await cursor.execute(f"UPDATE {self.table} SET balance = balance + %s WHERE id = %s",
                             (call.payload["delta"], call.payload["account"]))

    async def balances(self) -> dict[int, int]:
        async with self.pool.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute(f"SELECT id, balance FROM {self.table}")
            return dict(await cursor.fetchall())


@pytest.fixture(params=["postgres", "mariadb"])
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.getfixturevalue("pg_cluster")
    return str(request.param)


@pytest.fixture
async def accounts(engine: str, unique: str, request: pytest.FixtureRequest) -> AsyncIterator[Accounts]:
    table = f"accounts_{unique}"
    if engine == "postgres":
        import asyncpg

        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        pool = await asyncpg.create_pool(cluster.url, min_size=1, max_size=4,
                                         server_settings={"lock_timeout": "20s"})  # a lock wait fails, never hangs
        await pool.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, balance int)")
        await pool.execute(f"INSERT INTO {table} VALUES (1, 100), (2, 0)")
        found: Accounts = PostgresAccounts(pool, table)
    else:
        aiomysql = pytest.importorskip("aiomysql")
        host, _, port = MYSQL.partition(":")
        try:
            pool = await aiomysql.create_pool(host=host, port=int(port or 3306), user="root", password="", db="test",
                                              autocommit=True, minsize=1, maxsize=4)
        except Exception as exc:
            absent("MySQL/MariaDB", f"{type(exc).__name__}: {exc}")
        async with pool.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, balance int) ENGINE=InnoDB")
            await cursor.execute(f"INSERT INTO {table} VALUES (1, 100), (2, 0)")
        found = MySQLAccounts(pool, table)
    found.tag = unique
    try:
        yield found
    finally:
        for gid, branch in await found.resource.in_doubt():  # never leave prepared branches holding locks
            if engine == "postgres" or unique in gid:  # the private cluster is ours alone
                await found.resource.finish(gid, branch, "rollback")
        if engine == "postgres":
            await pool.execute(f"DROP TABLE IF EXISTS {table}")
            await pool.close()
        else:
            async with pool.acquire() as conn, conn.cursor() as cursor:
                await cursor.execute(f"DROP TABLE IF EXISTS {table}")
            pool.close()
            await pool.wait_closed()


@pytest.fixture
async def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    monkeypatch.setenv("MEZZO_TX_POLL", "0.05")
    node: RunningNode = await start_node(tmp_path / "data", store=f"sqlite:///{tmp_path / 'kv.db'}",
                                         targets=["transactions", "api"])
    try:
        async with node.client() as client, client.tx.serve():
            yield client
    finally:
        await node.node.stop()


async def ended(client: Any, gid: str | None) -> str:
    async def final() -> str | None:
        status = (await client.tx.get(gid))["status"]
        return status if status in ("succeed", "failed") else None

    return await wait_for(final, 20)  # type: ignore[no-any-return]


async def test_xa_branches_prepare_here_and_commit(app: Any, accounts: Accounts) -> None:
    move = app.tx.xa_branch("move", accounts.resource)(accounts.move)
    async with app.tx.xa(accounts.gid("commit"), **FAST) as xa:
        await xa.call_branch(move, {"account": 1, "delta": -30})
        await xa.call_branch(move, {"account": 2, "delta": 30})
        assert await accounts.balances() == {1: 100, 2: 0}  # prepared, not visible yet
        assert sorted(b for g, b in await accounts.resource.in_doubt() if g == xa.gid) == ["01", "02"]
    assert await ended(app, xa.gid) == "succeed"
    assert await accounts.balances() == {1: 70, 2: 30}
    assert [d for d in await accounts.resource.in_doubt() if d[0] == xa.gid] == []


async def test_xa_failed_branch_rolls_back_the_prepared_ones(app: Any, accounts: Accounts) -> None:
    move = app.tx.xa_branch("move", accounts.resource)(accounts.move)
    with pytest.raises(BranchFailed, match="account closed"):
        async with app.tx.xa(accounts.gid("rollback"), **FAST) as xa:
            await xa.call_branch(move, {"account": 1, "delta": -30})
            await xa.call_branch(move, {"account": 2, "delta": 30, "fail": True})
    assert await ended(app, xa.gid) == "failed"
    assert await accounts.balances() == {1: 100, 2: 0}
    assert [d for d in await accounts.resource.in_doubt() if d[0] == xa.gid] == []


async def test_recover_xa_resolves_in_doubt_branches(app: Any, accounts: Accounts) -> None:
    move = app.tx.xa_branch("move", accounts.resource)(accounts.move)
    dead = f"http://127.0.0.1:{free_port()}/gone"  # the app that prepared these is gone for good

    async def prepared_branch(gid: str, account: int) -> None:
        await app.tx.create({"gid": gid, "mode": "xa", "prepare": True, "options": FAST})
        await app.tx.register(gid, "01", {"commit": dead, "rollback": dead}, {})
        await accounts.resource.run(gid, "01", lambda conn: move(
            BranchCall(gid, "xa", "01", "action", {"account": account, "delta": -10}), conn))

    won, lost, open_ = (accounts.gid(n) for n in ("won", "lost", "open"))
    await prepared_branch(won, 1)
    await prepared_branch(lost, 2)
    await prepared_branch(open_, 99)  # no such account: it locks no row the others need
    await app.tx.submit(won)  # decided commit; the commit call cannot reach the dead app
    await app.tx.abort(lost)  # decided rollback
    done = await app.tx.recover_xa()
    assert done == {xid(won, "01"): "commit", xid(lost, "01"): "rollback"}
    assert await accounts.balances() == {1: 90, 2: 0}
    # the still-prepared transaction's branch stays in doubt until the app decides
    assert [g for g, _ in await accounts.resource.in_doubt() if accounts.tag in g] == [open_]
    assert await app.tx.recover_xa() == {}  # nothing decided is left


async def test_late_xa_action_after_rollback_is_recovered(app: Any, accounts: Accounts) -> None:
    """An action that prepares after its transaction was rolled back (a hanging branch) must not hold
    its locks forever: recovery rolls it back. A gid this coordinator does not know is left alone (the
    database may be shared with another installation)."""
    move = app.tx.xa_branch("move", accounts.resource)(accounts.move)
    gid = accounts.gid("late")
    await app.tx.create({"gid": gid, "mode": "xa", "prepare": True, "options": FAST})
    await app.tx.register(gid, "01", {"commit": move.url, "rollback": move.url}, {})
    await app.tx.abort(gid)
    assert await ended(app, gid) == "failed"  # its rollback found nothing prepared: a no-op
    await accounts.resource.run(gid, "01", lambda conn: move(
        BranchCall(gid, "xa", "01", "action", {"account": 1, "delta": -50}), conn))
    stranger = accounts.gid("unknown")
    await accounts.resource.run(stranger, "01", lambda conn: move(
        BranchCall(stranger, "xa", "01", "action", {"account": 2, "delta": 5}), conn))
    assert await app.tx.recover_xa() == {xid(gid, "01"): "rollback"}
    assert await accounts.balances() == {1: 100, 2: 0}
    assert [g for g, _ in await accounts.resource.in_doubt() if accounts.tag in g] == [stranger]
