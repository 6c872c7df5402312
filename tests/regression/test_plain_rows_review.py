"""Review of the PostgreSQL plain rows (the transaction log's table): compare-and-set against another
node's write in flight, revisions across a lock wait, several transactions on one key in one group,
deadlock freedom, cancellation, the session isolation the scheme depends on, the migration with
nodes starting together, and the operator audit records the log's writes carry.

Another node's write in flight is made with ``plain_txn_batch`` itself, called from a connection of
its own inside an open transaction: it then holds exactly the locks a node's call takes (whatever
their form) until the block ends and it commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

import mezzo.storage.postgres as postgres
from integration import test_postgres_plain as plain_tests
from mezzo.storage.kv import Compare, ConflictError, Delete, Put, TxnResult
from mezzo.storage.postgres import PostgresStore, split_schema
from mezzo.testing.fixtures import start_node, wait_for

nodes = plain_tests.nodes  # the fixture: two stores on one schema, as two nodes

BATCH = "SELECT * FROM plain_txn_batch($1::int[], $2::text[], $3::bytea[], $4::int[], $5::text[], $6::bigint[])"


class InFlight:
    """Another node's plain write, sent and not yet committed (see ``in_flight``)."""

    def __init__(self, conn: Any, monitor: Any) -> None:
        self.conn, self.monitor = conn, monitor

    async def write(self, ops: list[tuple[str, bytes | None]]) -> int:
        """One more call in the same open transaction; its revision."""
        row = await self.conn.fetchrow(BATCH, [len(ops)], [k for k, _ in ops], [v for _, v in ops], [0], [], [])
        assert row["conflict"] is None
        return int(row["rev"])

    async def blocked(self) -> bool:
        """Does some session wait for a lock this transaction holds?"""
        return bool(await self.monitor.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            self.conn.get_server_pid()))


@contextlib.asynccontextmanager
async def in_flight(url: str) -> AsyncIterator[InFlight]:
    """A transaction of another node, committed when the block ends."""
    dsn, schema = split_schema(url)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    monitor = await asyncpg.connect(dsn)  # pg_stat_activity is frozen inside a transaction
    try:
        async with conn.transaction():
            yield InFlight(conn, monitor)
    finally:
        await conn.close()
        await monitor.close()


async def test_a_compare_that_waited_for_a_lock_sees_the_write_it_waited_for(
        nodes: tuple[PostgresStore, PostgresStore], postgres_url: str) -> None:
    """The compare is read after the key's lock is granted (a fresh snapshot), not before it waited:
    a key the call only compares (and does not write) is locked and checked like the others."""
    rows = nodes[0].plain()
    before = (await rows.txn([Put("/cmp/k", b"0")])).revision
    async with in_flight(postgres_url) as other:
        theirs = await other.write([("/cmp/k", b"1")])
        ours = asyncio.create_task(rows.txn([Put("/cmp/other", b"x")], [Compare("/cmp/k", before)]))
        await wait_for(other.blocked)
    with pytest.raises(ConflictError) as failed:
        await ours
    assert (failed.value.key, failed.value.expected, failed.value.actual) == ("/cmp/k", before, theirs)
    assert await rows.get("/cmp/other") is None


async def test_a_write_that_waited_for_a_lock_gets_a_higher_revision_than_the_one_it_waited_for(
        nodes: tuple[PostgresStore, PostgresStore], postgres_url: str) -> None:
    """The revision is taken after the lock: a write that waited never lands under a smaller revision
    than the one it waited for, even when that one took its revision after the wait began."""
    rows = nodes[0].plain()
    async with in_flight(postgres_url) as other:
        await other.write([("/rev/k", b"1")])
        ours = asyncio.create_task(rows.txn([Put("/rev/k", b"2")]))
        await wait_for(other.blocked)
        theirs = await other.write([("/rev/k", b"3")])  # a revision taken while ours waits
    result = await ours
    assert result.revision > theirs
    kv = await rows.get("/rev/k")
    assert kv is not None and (kv.value, kv.mod_revision) == (b"2", result.revision)


async def test_the_transactions_of_one_group_see_each_others_writes(postgres_url: str) -> None:
    """Create, create again (conflict), delete, re-create and a compare-only transaction on one key, in
    one call: each sees the ones before it."""
    store = PostgresStore(postgres_url)
    await store.open()
    rows = store.plain()
    sizes: list[int] = []
    apply = rows._apply

    async def recording(batch: Any) -> Any:
        sizes.append(len(batch))
        return await apply(batch)

    rows._apply = recording  # type: ignore[method-assign]
    try:
        async with in_flight(postgres_url) as other:
            await other.write([("/grp/block", b"x")])
            first = asyncio.create_task(rows.txn([Put("/grp/block", b"y")]))
            await wait_for(other.blocked)  # our committer waits in the server: the next ones queue
            specs: list[tuple[list[Any], list[Compare]]] = [
                ([Put("/grp/k", b"1")], [Compare("/grp/k", 0)]),
                ([Put("/grp/k", b"2")], [Compare("/grp/k", 0)]),  # exists now: conflict
                ([Delete("/grp/k")], []),
                ([Put("/grp/k", b"4")], [Compare("/grp/k", 0)]),  # absent again
                ([], [Compare("/grp/k", 0)]),  # exists: conflict
            ]
            queued = [asyncio.create_task(rows.txn(ops, cmps)) for ops, cmps in specs]
            await wait_for(lambda: len(rows._group.waiting) == len(specs))
        await first
        results = await asyncio.gather(*queued, return_exceptions=True)
        assert sizes == [1, len(specs)]
        created, again, deleted, recreated, compared = results
        assert isinstance(created, TxnResult) and isinstance(deleted, TxnResult) and isinstance(recreated, TxnResult)
        assert isinstance(again, ConflictError) and again.actual == created.revision
        assert isinstance(compared, ConflictError) and compared.actual == recreated.revision
        assert created.revision < deleted.revision < recreated.revision
        kv = await rows.get("/grp/k")
        assert kv is not None and (kv.value, kv.mod_revision) == (b"4", recreated.revision)
    finally:
        await store.close()


async def test_two_nodes_writing_overlapping_keys_in_any_order_do_not_deadlock(
        nodes: tuple[PostgresStore, PostgresStore]) -> None:
    """Groups of both nodes touch the same keys in shuffled orders; every call ends in a result or a
    failed compare (a deadlock would be a DeadlockDetectedError after deadlock_timeout)."""
    rows = [store.plain() for store in nodes]
    keys = [f"/dl/{i}" for i in range(12)]
    rng = random.Random(7)
    plans = [[rng.sample(keys, 5) for _ in range(8)] for _ in range(24)]
    errors: list[BaseException] = []

    async def writer(index: int) -> None:
        for chosen in plans[index]:
            store = rows[index % 2]
            current = await store.get(chosen[-1])
            try:
                await store.txn([Put(k, b"%d" % index) for k in chosen[:-1]],
                                [Compare(chosen[-1], current.mod_revision if current else 0)])
            except ConflictError:
                pass
            except Exception as exc:
                errors.append(exc)

    await asyncio.wait_for(asyncio.gather(*(writer(i) for i in range(len(plans)))), 120)
    assert errors == []


async def test_a_plain_write_cancelled_while_queued_is_not_written(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    rows = store.plain()
    try:
        async with in_flight(postgres_url) as other:
            await other.write([("/cancel/first", b"x")])
            first = asyncio.create_task(rows.txn([Put("/cancel/first", b"y")]))
            await wait_for(other.blocked)
            second = asyncio.create_task(rows.txn([Put("/cancel/second", b"v")]))
            await wait_for(lambda: rows._group.waiting)
            second.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await second
        await first
        assert await rows.get("/cancel/second") is None
    finally:
        await store.close()


async def test_compare_and_set_holds_on_a_database_that_defaults_to_repeatable_read(postgres_url: str) -> None:
    """``ALTER DATABASE ... SET default_transaction_isolation = 'repeatable read'`` is a legitimate
    setting of a shared database (simulated here by the URL, which asyncpg passes on as a session
    setting). The lock scheme relies on each statement after the lock wait taking a fresh snapshot,
    i.e. READ COMMITTED: under REPEATABLE READ the compare reads the snapshot taken before the wait.
    The log has such compare-only keys: ``register_branch`` compares the global transaction it does
    not write, so a branch could be registered after a concurrent submit."""
    url = postgres_url + "&default_transaction_isolation=repeatable%20read"
    store = PostgresStore(url)
    await store.open()
    rows = store.plain()
    try:
        before = (await rows.txn([Put("/rr/k", b"0")])).revision
        async with in_flight(postgres_url) as other:
            theirs = await other.write([("/rr/k", b"1")])
            ours = asyncio.create_task(rows.txn([Put("/rr/other", b"x")], [Compare("/rr/k", before)]))
            await wait_for(other.blocked)
        with pytest.raises(ConflictError) as failed:
            await ours
        assert failed.value.actual == theirs
        assert await rows.get("/rr/other") is None
    finally:
        await store.close()


@pytest.mark.parametrize("setting", ["", "&default_transaction_isolation=repeatable%20read"], ids=["default", "rr"])
async def test_nodes_starting_together_on_an_older_schema_migrate_it_once(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    """Migration 4 runs once under the migration lock; the nodes that waited for it see it done. That
    too needs READ COMMITTED: under a REPEATABLE READ default the waiter reads schema_migrations in
    the snapshot taken before its wait and runs migration 1 again (DuplicateTableError)."""
    monkeypatch.setattr(postgres, "MIGRATIONS", postgres.MIGRATIONS[:3])
    old = PostgresStore(postgres_url)
    await old.open()
    written = await old.txn([Put(f"/tx/active/g{i}", b"lease") for i in range(20)] + [Put("/tx0", b"not the log")])
    await old.close()
    monkeypatch.undo()
    stores = [PostgresStore(postgres_url + setting) for _ in range(3)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        moved = (await stores[0].plain().range("/tx/")).items
        assert len(moved) == 20 and {kv.mod_revision for kv in moved} == {written.revision}
        assert (await stores[1].range("/tx/")).items == [] and await stores[1].get("/tx0") is not None
    finally:
        for store in stores:
            await store.close()


async def test_an_operator_abort_and_retry_are_in_the_audit_log(store_url: str, tmp_path: Path) -> None:
    """The service writes the audit record of ``tx.abort``/``tx.retry`` in the log's own store
    transaction; ``/v1/audit`` reads the KV store. On PostgreSQL the log's transaction now goes to
    the plain rows, and the audit record with it, where no audit reader looks."""
    running = await start_node(tmp_path / "data", store=store_url, targets=["transactions", "api"])
    try:
        async with httpx.AsyncClient(base_url=running.url, headers={"Authorization": f"Bearer {running.token}"},
                                     timeout=30) as http:
            for gid in ("au1", "au2"):
                created = await http.post("/v1/tx/transactions", json={
                    "gid": gid, "mode": "tcc", "prepare": True, "options": {"retry_interval": 30}})
                assert created.status_code == 201, created.text
            assert (await http.post("/v1/tx/transactions/au1:retry")).status_code == 200
            assert (await http.post("/v1/tx/transactions/au2:abort")).status_code == 200

            async def audited() -> list[tuple[str, str]] | None:
                items = (await http.get("/v1/audit", params={"kind": "Transaction"})).json()["items"]
                return sorted((i["name"], i["action"]) for i in items) or None

            assert await wait_for(audited, 5) == [("au1", "tx.retry"), ("au2", "tx.abort")]
    finally:
        await running.node.stop()
