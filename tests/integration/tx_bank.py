"""The bank-transfer model of the transaction crash suite (used by ``test_tx_crash.py`` and ``tests/long``).

Accounts live in real databases: a PostgreSQL database and a MariaDB database of their own, created
and dropped here. Transfers between them run as sagas, TCC and two-phase messages (every branch
behind the barrier), and as XA between MariaDB accounts; each local change also writes a ledger row
``(gid, branch, op, account, d_balance, d_held, d_incoming)`` in the same local transaction. While
clients transfer, the coordinator node (a ``mezzo`` process on a PostgreSQL or SQLite store) is
killed with SIGKILL at random moments and restarted. ``Bank.check`` then proves the end state:

- every transaction the coordinator knows reached ``succeed`` or ``failed``; one it never recorded
  left no trace in either database;
- per transaction, the ledger nets out: a succeeded transfer moved exactly its amount from one
  account to the other, a failed one moved nothing (all done or all undone);
- money is conserved (the balances add up to the opening total), nothing is left held or incoming;
- no hanging branch: no try/action whose undo is missing in a failed transaction, no XA branch in doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mezzo import Mezzo
from mezzo.sdk.barrier import Barrier, MessageRolledBack, ddl_mysql, ddl_postgres, message_barrier
from mezzo.testing import backends
from mezzo.testing.fixtures import RunningNode, spawn_node, stop_process, wait_for
from mezzo.transactions.xa import MySQLXa

MYSQL = os.environ.get("MEZZO_TEST_MYSQL", "127.0.0.1:3306")
POSTGRES = os.environ.get("MEZZO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
OPENING = 1000  # each account's opening balance
PLAIN_ACCOUNTS = (1, 2, 3, 4)  # in both databases: saga, TCC and message transfers
XA_ACCOUNTS = (101, 102, 103)  # MariaDB only: XA locks its rows until commit, so XA gets rows of its own
FINAL = ("succeed", "failed")
TOKEN = "mzo_crashbank_" + "z" * 32
OPTIONS = {"retry_interval": 0.2, "request_timeout": 10}  # above the XA branch's 2 s lock wait: see ``xa``
# A saga's calls time out sooner, so its first round calls ahead of its marks (with over 2 s of the 4 s
# lease left, see Lease.may_call_ahead); half of them also roll back once past timeout_to_fail, so a kill
# in that round is followed by a rollback that must compensate what may have run.
SAGA_OPTIONS = {"retry_interval": 0.2, "request_timeout": 1}
LEASE = "4"
PREPARED_TIMEOUT = 3  # a TCC/XA/message the client could not submit (the node was down) is aborted after this


class Refused(Exception):
    """A business rule said no (insufficient funds, a scripted failure): the branch answers FAILURE."""


@dataclass
class Stats:
    iterations: int = 0
    kills: int = 0
    started: dict[str, int] = field(default_factory=dict)  # mode -> transfers the clients began
    statuses: dict[str, int] = field(default_factory=dict)  # end status -> transactions
    xa_recovered: int = 0  # in-doubt XA branches the app's recovery (MySQLXa.recover) had to finish
    completed: int = 0  # transfers the client saw through without an error
    client_errors: int = 0  # transfers cut short: the node was down, or a branch refused (expected)
    error_samples: list[str] = field(default_factory=list)


# databases ---------------------------------------------------------------------------------------


async def mysql_connect(db: str | None = None, *, autocommit: bool = False) -> Any:
    import aiomysql

    host, _, port = MYSQL.partition(":")
    return await aiomysql.connect(host=host, port=int(port or 3306), user="root", password="", db=db,
                                  autocommit=autocommit)


async def mysql_problem() -> str | None:
    try:
        import aiomysql  # noqa: F401
    except ImportError:
        return "aiomysql is not installed"
    try:
        conn = await mysql_connect()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    conn.close()
    return None


class Bank:
    """The two account databases, the branch application over them, and the end-state checks."""

    def __init__(self, postgres_base: str, name: str) -> None:
        self.name = name
        self.admin = postgres_base
        self.pg_dsn = postgres_base.rsplit("/", 1)[0] + "/" + name
        self.pg: Any = None
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self._gids: set[str] = set()  # every transaction a client began

    @property
    def gids(self) -> set[str]:
        return self._gids

    # setup and teardown ------------------------------------------------------------------------

    async def create(self) -> None:
        admin = await asyncpg.connect(self.admin)
        try:
            await admin.execute(f"CREATE DATABASE {self.name}")
        finally:
            await admin.close()
        self.pg = await asyncpg.create_pool(self.pg_dsn, min_size=1, max_size=6)
        async with self.pg.acquire() as conn:
            for ddl in ddl_postgres():
                await conn.execute(ddl)
            await conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, "
                               "held bigint NOT NULL DEFAULT 0, incoming bigint NOT NULL DEFAULT 0)")
            await conn.execute("CREATE TABLE ledger (id bigserial PRIMARY KEY, gid text, branch_id text, op text, "
                               "account int, d_balance bigint, d_held bigint, d_incoming bigint)")
            await conn.executemany("INSERT INTO accounts (id, balance) VALUES ($1, $2)",
                                   [(a, OPENING) for a in PLAIN_ACCOUNTS])
        conn = await mysql_connect(autocommit=True)
        try:
            async with conn.cursor() as cur:
                for ddl in ddl_mysql(f"{self.name}.barrier"):  # creates the database too
                    await cur.execute(ddl)
                await cur.execute(f"CREATE TABLE {self.name}.accounts (id int PRIMARY KEY, balance bigint NOT NULL, "
                                  "held bigint NOT NULL DEFAULT 0, incoming bigint NOT NULL DEFAULT 0) ENGINE=InnoDB")
                await cur.execute(f"CREATE TABLE {self.name}.ledger (id bigint AUTO_INCREMENT PRIMARY KEY, "
                                  "gid varchar(128), branch_id varchar(64), op varchar(32), account int, "
                                  "d_balance bigint, d_held bigint, d_incoming bigint) ENGINE=InnoDB")
                await cur.executemany(f"INSERT INTO {self.name}.accounts (id, balance) VALUES (%s, %s)",
                                      [(a, OPENING) for a in (*PLAIN_ACCOUNTS, *XA_ACCOUNTS)])
        finally:
            conn.close()

    async def drop(self) -> None:
        await self.stop_app()
        if self.pg is not None:
            await self.pg.close()
        admin = await asyncpg.connect(self.admin)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        finally:
            await admin.close()
        conn = await mysql_connect(autocommit=True)
        try:
            for gid, branch in await MySQLXa.in_doubt(conn):  # never leave locks behind on the shared server
                if gid in self._gids:
                    await MySQLXa.finish(conn, gid, branch, "rollback")
            async with conn.cursor() as cur:
                await cur.execute(f"DROP DATABASE IF EXISTS {self.name}")
        finally:
            conn.close()

    # the branch application --------------------------------------------------------------------

    async def serve(self) -> None:
        app = Starlette(routes=[Route("/{db}/{side}", self.branch, methods=["POST"]),
                                Route("/xa", self.xa, methods=["POST"]),
                                Route("/query", self.query, methods=["GET"])])
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        server = self._server
        await wait_for(lambda: server.started)

    async def stop_app(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
            self._server = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @staticmethod
    def deltas(side: str, op: str, amount: int) -> tuple[int, int, int]:
        """(balance, held, incoming) changes of one branch op on the paying (out) or receiving (in) side."""
        table = {
            ("out", "action"): (-amount, 0, 0), ("out", "compensate"): (amount, 0, 0),
            ("in", "action"): (amount, 0, 0), ("in", "compensate"): (-amount, 0, 0),
            ("out", "try"): (-amount, amount, 0), ("out", "confirm"): (0, -amount, 0),
            ("out", "cancel"): (amount, -amount, 0),
            ("in", "try"): (0, 0, amount), ("in", "confirm"): (amount, 0, -amount), ("in", "cancel"): (0, 0, -amount),
        }
        return table[(side, op)]

    async def branch(self, request: Request) -> JSONResponse:
        """Saga, TCC and message branches on either database (``/pg/out``, ``/my/in``...), behind the barrier."""
        db, side = request.path_params["db"], request.path_params["side"]
        params = request.query_params
        body = await request.json()
        op, amount, account = params["op"], int(body["amount"]), int(body["account"])
        change = self.deltas(side, op, amount)
        checks = op in ("action", "try") and params["trans_type"] != "msg"  # a message branch must succeed
        barrier = Barrier.from_params(params)
        row = (params["gid"], params["branch_id"], op, account, *change)
        try:
            if db == "pg":
                async with self.pg.acquire() as conn:
                    await barrier.call_postgres(conn, lambda c: self.apply_pg(c, row, checks and side == "out",
                                                                               checks and body.get("fail")))
            else:
                conn = await mysql_connect(self.name)
                try:
                    await barrier.call_mysql(conn, lambda c: self.apply_my(c, row, checks and side == "out",
                                                                            checks and body.get("fail")),
                                             table=f"{self.name}.barrier")
                finally:
                    conn.close()
        except Refused as exc:
            return JSONResponse({"dtm_result": "FAILURE", "reason": str(exc)}, status_code=409)
        return JSONResponse({"dtm_result": "SUCCESS"})

    @staticmethod
    async def apply_pg(conn: Any, row: tuple[Any, ...], covered: bool, fail: bool) -> None:
        account, d_balance, d_held, d_incoming = row[3:]
        if fail:
            raise Refused("scripted failure")
        done = await conn.execute("UPDATE accounts SET balance = balance + $2, held = held + $3, "
                                  "incoming = incoming + $4 WHERE id = $1 AND (NOT $5 OR balance + $2 >= 0)",
                                  account, d_balance, d_held, d_incoming, covered)
        if done.endswith(" 0"):
            raise Refused("insufficient funds")
        await conn.execute("INSERT INTO ledger (gid, branch_id, op, account, d_balance, d_held, d_incoming) "
                           "VALUES ($1, $2, $3, $4, $5, $6, $7)", *row)

    async def apply_my(self, cur: Any, row: tuple[Any, ...], covered: bool, fail: bool) -> None:
        account, d_balance, d_held, d_incoming = row[3:]
        if fail:
            raise Refused("scripted failure")
        done = await cur.execute(f"UPDATE {self.name}.accounts SET balance = balance + %s, held = held + %s, "
                                 f"incoming = incoming + %s WHERE id = %s AND (NOT %s OR balance + %s >= 0)",
                                 (d_balance, d_held, d_incoming, account, covered, d_balance))
        if done == 0:
            raise Refused("insufficient funds")
        await cur.execute(f"INSERT INTO {self.name}.ledger (gid, branch_id, op, account, d_balance, d_held, "
                          "d_incoming) VALUES (%s, %s, %s, %s, %s, %s, %s)", row)

    async def xa(self, request: Request) -> JSONResponse:
        """An XA branch on MariaDB: op=action runs and prepares; commit/rollback finish it."""
        params = request.query_params
        body = await request.json()
        gid, branch_id, op = params["gid"], params["branch_id"], params["op"]
        conn = await mysql_connect(self.name, autocommit=True)
        try:
            if op == "action":
                delta = int(body["delta"])
                row = (gid, branch_id, op, int(body["account"]), delta, 0, 0)
                async with conn.cursor() as cur:
                    # give up on a lock well before the client gives up on the call: a branch that prepared
                    # after its caller left (and the coordinator rolled back) would hang in doubt
                    await cur.execute("SET SESSION innodb_lock_wait_timeout = 2")
                try:
                    await MySQLXa.run(conn, gid, branch_id,
                                      lambda c: self.apply_my(c, row, delta < 0, bool(body.get("fail"))))
                except Refused as exc:
                    return JSONResponse({"dtm_result": "FAILURE", "reason": str(exc)}, status_code=409)
            else:
                await MySQLXa.finish(conn, gid, branch_id, op)
        finally:
            conn.close()  # MySQLXa.run closed it already after XA PREPARE (a no-op then)
        return JSONResponse({"dtm_result": "SUCCESS"})

    async def query(self, request: Request) -> JSONResponse:
        """The two-phase message check-back: did the local transaction (on PostgreSQL) commit?"""
        async with self.pg.acquire() as conn:
            try:
                await message_barrier(request.query_params["gid"]).query_prepared_postgres(conn)
            except MessageRolledBack:
                return JSONResponse({"dtm_result": "FAILURE"}, status_code=409)
        return JSONResponse({"dtm_result": "SUCCESS"})

    # transfers ---------------------------------------------------------------------------------

    async def transfer(self, client: Mezzo, rng: random.Random, stats: Stats) -> None:
        """One random transfer; any error (the node is down, a branch refused) just ends it."""
        mode = rng.choice(("saga", "tcc", "xa", "msg"))
        gid = f"bank-{mode}-{uuid.uuid4().hex[:16]}"
        self._gids.add(gid)
        stats.started[mode] = stats.started.get(mode, 0) + 1
        amount = rng.randint(1, 60)
        fail = rng.random() < 0.15
        src, dst = rng.choice(("pg", "my")), rng.choice(("pg", "my"))
        a, b = rng.choice(PLAIN_ACCOUNTS), rng.choice(PLAIN_ACCOUNTS)
        out = {"account": a, "amount": amount}
        into = {"account": b, "amount": amount, "fail": fail}
        tx = client.tx
        try:
            if mode == "saga":
                timeout = {"timeout_to_fail": 2} if rng.random() < 0.5 else {}
                async with tx.saga(gid, **SAGA_OPTIONS, **timeout) as saga:
                    saga.add(f"{self.url}/{src}/out", f"{self.url}/{src}/out", out)
                    saga.add(f"{self.url}/{dst}/in", f"{self.url}/{dst}/in", into)
            elif mode == "tcc":
                async with tx.tcc(gid, timeout_to_fail=PREPARED_TIMEOUT, **OPTIONS) as tcc:
                    await tcc.call(f"{self.url}/{src}/out", f"{self.url}/{src}/out", f"{self.url}/{src}/out", out)
                    await tcc.call(f"{self.url}/{dst}/in", f"{self.url}/{dst}/in", f"{self.url}/{dst}/in", into)
            elif mode == "xa":
                x, y = rng.sample(XA_ACCOUNTS, 2)
                async with tx.xa(gid, timeout_to_fail=PREPARED_TIMEOUT, **OPTIONS) as xa:
                    await xa.call(f"{self.url}/xa", {"account": x, "delta": -amount})
                    await xa.call(f"{self.url}/xa", {"account": y, "delta": amount, "fail": fail})
            else:
                async with tx.message(f"{self.url}/query", gid, **OPTIONS) as msg:
                    msg.add(f"{self.url}/{dst}/in", {"account": b, "amount": amount})
                    await msg.prepare()
                    row = (gid, "00", "msg", a, -amount, 0, 0)
                    async with self.pg.acquire() as conn:
                        await message_barrier(gid).call_postgres(conn, lambda c: self.apply_pg(c, row, True, False))
            stats.completed += 1
        except Exception as exc:
            stats.client_errors += 1
            if len(stats.error_samples) < 5:
                stats.error_samples.append(f"{mode}: {type(exc).__name__}: {exc}"[:300])

    # the end state -----------------------------------------------------------------------------

    async def ledger(self) -> list[tuple[str, str, str, int, int, int, int, str]]:
        async with self.pg.acquire() as conn:
            rows = [(*r, "pg") for r in await conn.fetch(
                "SELECT gid, branch_id, op, account, d_balance, d_held, d_incoming FROM ledger")]
        conn = await mysql_connect(self.name)
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT gid, branch_id, op, account, d_balance, d_held, d_incoming FROM ledger")
                rows += [(*r, "my") for r in await cur.fetchall()]
        finally:
            conn.close()
        return [tuple(r) for r in rows]  # type: ignore[misc]

    async def totals(self) -> tuple[int, int, int]:
        async with self.pg.acquire() as conn:
            pg = await conn.fetchrow("SELECT sum(balance), sum(held), sum(incoming) FROM accounts")
        conn = await mysql_connect(self.name)
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT sum(balance), sum(held), sum(incoming) FROM accounts")
                my = await cur.fetchone()
        finally:
            conn.close()
        return int(pg[0]) + int(my[0]), int(pg[1]) + int(my[1]), int(pg[2]) + int(my[2])

    async def recover_xa(self, node: RunningNode) -> dict[str, str]:
        """What an XA application runs at start and periodically: finish the in-doubt branches of decided
        transactions (``MySQLXa.recover``). A branch can be left in doubt when its action prepared after
        its caller gave up and the transaction was rolled back."""
        async with Mezzo(node.url, TOKEN) as client:
            async def status_of(gid: str) -> str | None:
                return (await client.tx.get(gid))["status"] if gid in self._gids else None  # type: ignore[no-any-return]

            conn = await mysql_connect(autocommit=True)
            try:
                return await MySQLXa.recover(conn, status_of)
            finally:
                conn.close()

    async def in_doubt(self) -> list[tuple[str, str]]:
        conn = await mysql_connect(autocommit=True)
        try:
            return [d for d in await MySQLXa.in_doubt(conn) if d[0] in self._gids]
        finally:
            conn.close()

    async def check(self, statuses: dict[str, str]) -> list[str]:
        """Every violation of the end state (an empty list when all is well)."""
        problems = [f"{gid} ended {status}" for gid, status in statuses.items() if status not in (*FINAL, "unknown")]
        net: dict[str, dict[tuple[str, int], int]] = {}
        ops: dict[str, set[tuple[str, str]]] = {}
        for gid, branch_id, op, account, d_balance, d_held, d_incoming, db in await self.ledger():
            per = net.setdefault(gid, {})
            per[(db, account)] = per.get((db, account), 0) + d_balance
            ops.setdefault(gid, set()).add((branch_id, op))
            if d_held or d_incoming:
                per[(db, -account)] = per.get((db, -account), 0) + d_held + d_incoming
        for gid in self._gids:
            status = statuses.get(gid, "unknown")
            moved = {k: v for k, v in net.get(gid, {}).items() if v}
            if status in ("failed", "unknown") and moved:
                problems.append(f"{gid} is {status} but moved money: {moved}")
            if status == "succeed":
                if len(moved) not in (0, 2) or sum(moved.values()) != 0 or any(k[1] < 0 for k in moved):
                    problems.append(f"{gid} succeeded but its transfer is not whole: {moved}")
            undone = {("try", "cancel"), ("action", "compensate")}
            for branch_id, op in ops.get(gid, set()):
                for forward, back in undone:
                    if op == forward and status == "failed" and (branch_id, back) not in ops.get(gid, set()):
                        problems.append(f"{gid}: branch {branch_id} ran {forward} and was never undone (hanging)")
        balance, held, incoming = await self.totals()
        opening = OPENING * (2 * len(PLAIN_ACCOUNTS) + len(XA_ACCOUNTS))
        if balance != opening:
            problems.append(f"money not conserved: {balance} in the accounts, {opening} at the opening")
        if held or incoming:
            problems.append(f"left over: {held} held, {incoming} incoming")
        doubt = await self.in_doubt()
        if doubt:
            problems.append(f"XA branches in doubt: {doubt}")
        return problems


# the chaos run -----------------------------------------------------------------------------------


@dataclass
class CoordinatorProcess:
    """The coordinator node under test: one ``mezzo run`` process at a time on one data dir and store."""

    data_dir: Path
    store: str
    node: RunningNode | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"MEZZO_STORE": self.store, "MEZZO_ADMIN_TOKEN": TOKEN, "MEZZO_TX_LEASE": LEASE,
                "MEZZO_TX_POLL": "0.1", "MEZZO_LOG_LEVEL": "warning"}

    slow_starts: int = 0  # starts that missed spawn_node's 30 s readiness deadline (it SIGKILLs those)

    async def start(self) -> RunningNode:
        for _ in range(5):  # a loaded machine can take longer than 30 s to start a node: that is no failure
            try:
                self.node = await asyncio.to_thread(spawn_node, self.data_dir, self.env,
                                                    ("run", "--targets", "transactions,api"))
                return self.node
            except TimeoutError:
                self.slow_starts += 1
        raise TimeoutError("the coordinator node did not become ready in 5 attempts")

    def kill(self) -> None:
        if self.node is not None:
            stop_process(self.node, signal.SIGKILL)
            self.node = None

    def stop(self) -> None:
        if self.node is not None:
            stop_process(self.node)
            self.node = None


async def statuses_of(node: RunningNode, gids: set[str]) -> dict[str, str]:
    """The coordinator's status of each of ``gids`` ("unknown" when it never recorded it)."""
    found: dict[str, str] = {}
    async with Mezzo(node.url, TOKEN) as client:
        after = None
        while True:
            page = await client.tx.list(after=after, limit=1000)
            found.update({t["gid"]: t["status"] for t in page["items"]})
            after = page["next"]
            if not after:
                break
    return {gid: found.get(gid, "unknown") for gid in gids}


async def chaos(bank: Bank, coordinator: CoordinatorProcess, *, iterations: int, clients: int, seed: int,
                run_for: Callable[[random.Random], float], min_transfers: int = 2,
                settle: float = 90.0) -> tuple[Stats, list[str]]:
    """``iterations`` times: start the node, transfer with ``clients`` workers, SIGKILL the node after
    ``run_for(rng)`` seconds (and ``min_transfers`` transfers seen through). Then start it once more, wait for every transaction to end, and check."""
    rng = random.Random(seed)
    stats = Stats()
    for _ in range(iterations):
        node = await coordinator.start()
        stop = asyncio.Event()

        async def worker(wrng: random.Random, url: str, stop: asyncio.Event = stop) -> None:
            async with Mezzo(url, TOKEN) as client:
                while not stop.is_set():
                    await bank.transfer(client, wrng, stats)

        tasks = [asyncio.create_task(worker(random.Random(rng.random()), node.url)) for _ in range(clients)]
        # a kill lands at a random moment, but only once this node did some work (a loaded machine is slow)
        floor = stats.completed + min_transfers
        await asyncio.sleep(run_for(rng))
        await wait_for(lambda floor=floor: stats.completed >= floor, timeout=120, interval=0.05)
        coordinator.kill()  # SIGKILL in the middle of whatever it was doing
        stats.kills += 1
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        stats.iterations += 1
    node = await coordinator.start()
    deadline = time.monotonic() + settle
    while True:
        statuses = await statuses_of(node, bank.gids)
        open_ = [g for g, s in statuses.items() if s not in (*FINAL, "unknown")]
        if not open_ or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    for status in statuses.values():
        stats.statuses[status] = stats.statuses.get(status, 0) + 1
    stats.xa_recovered = len(await bank.recover_xa(node))
    problems = await bank.check(statuses)
    coordinator.stop()
    return stats, problems


@contextlib.asynccontextmanager
async def open_bank(postgres_base: str) -> AsyncIterator[Bank]:
    bank = Bank(postgres_base, f"mezzo_bank_{uuid.uuid4().hex[:10]}")
    await bank.create()
    try:
        await bank.serve()
        yield bank
    finally:
        await bank.drop()


@pytest.fixture(name="bank")
async def bank_fixture() -> AsyncIterator[Bank]:
    """A fresh bank (import this fixture into a test module); skips, or fails with
    MEZZO_REQUIRE_BACKENDS=1, when PostgreSQL or MariaDB is not there."""
    for what, problem in (("PostgreSQL", await backends.postgres_problem(POSTGRES)),
                          ("MariaDB/MySQL", await mysql_problem())):
        if problem:
            message = f"{what} is not reachable ({problem})"
            if os.environ.get("MEZZO_REQUIRE_BACKENDS") == "1":
                pytest.fail(f"MEZZO_REQUIRE_BACKENDS=1 but {message}", pytrace=False)
            pytest.skip(message)
    async with open_bank(POSTGRES) as opened:
        yield opened
