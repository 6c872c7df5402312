"""The PostgreSQL store's plain rows (the transaction log's table): compare-and-set across nodes, a
group with a failed compare, reads, and the migration that moves the log out of ``kv``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import mezzo.storage.postgres as postgres
from mezzo.storage.kv import Compare, ConflictError, Delete, Put
from mezzo.storage.postgres import PostgresStore


@pytest.fixture
async def nodes(postgres_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one schema, as two nodes."""
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await first.open()
    await second.open()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_compare_and_set_loses_no_update_between_nodes(nodes: tuple[PostgresStore, PostgresStore]) -> None:
    """Increments by read + compare-and-set from two nodes at once: every one that succeeded counts."""
    rows = [store.plain() for store in nodes]
    await rows[0].txn([Put("/c", b"0")], [Compare("/c", 0)])
    wins = 0

    async def bump(index: int) -> None:
        nonlocal wins
        for _ in range(40):
            kv = await rows[index % 2].get("/c")
            assert kv is not None
            try:
                await rows[index % 2].txn([Put("/c", b"%d" % (int(kv.value) + 1))], [Compare("/c", kv.mod_revision)])
            except ConflictError:
                continue
            wins += 1

    await asyncio.gather(*(bump(i) for i in range(8)))
    final = await rows[0].get("/c")
    assert final is not None and int(final.value) == wins and wins > 0


async def test_only_one_creator_of_a_key_wins(nodes: tuple[PostgresStore, PostgresStore]) -> None:
    rows = [store.plain() for store in nodes]
    results = await asyncio.gather(*(rows[i % 2].txn([Put("/once", b"%d" % i)], [Compare("/once", 0)])
                                     for i in range(10)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, BaseException))


async def test_a_failed_compare_fails_only_its_own_write_in_a_group(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    rows = store.plain()
    try:
        first = await rows.txn([Put("/a", b"1"), Put("/b", b"1")])
        results = await asyncio.gather(
            rows.txn([Put("/a", b"2")], [Compare("/a", first.revision)]),
            rows.txn([Put("/b", b"2")], [Compare("/b", first.revision + 1000)]),  # wrong: nothing written
            rows.txn([Delete("/a")], [Compare("/a", 0)]),  # wrong: /a exists
            rows.txn([Put("/c", b"1")]),
            return_exceptions=True,
        )
        assert not isinstance(results[0], BaseException) and results[0].revision > first.revision
        assert isinstance(results[1], ConflictError) and results[1].key == "/b"
        assert results[1].actual == first.revision
        assert isinstance(results[2], ConflictError) and results[2].actual > 0
        a, b = await rows.get("/a"), await rows.get("/b")
        assert a is not None and a.value == b"2" and a.mod_revision == results[0].revision
        assert b is not None and b.value == b"1"
        await rows.txn([Delete("/c")])
        assert await rows.get("/c") is None
        assert await store.get("/a") is None  # plain rows are not in the KV store
    finally:
        await store.close()


async def test_range_pages_in_key_order(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    rows = store.plain()
    try:
        await rows.txn([Put(f"/p/{i:02d}", b"v") for i in range(5)] + [Put("/q", b"v"), Put("/o", b"v")])
        page = await rows.range("/p/", limit=2)
        assert [kv.key for kv in page.items] == ["/p/00", "/p/01"] and page.more
        rest = await rows.range("/p/", start_after="/p/01")
        assert [kv.key for kv in rest.items] == ["/p/02", "/p/03", "/p/04"] and not rest.more
    finally:
        await store.close()


async def test_the_migration_moves_the_transaction_log_with_its_revisions(postgres_url: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A store made before plain rows keeps its transactions: they move over with the revisions
    nodes compare against, and later revisions stay above every one given out before."""
    monkeypatch.setattr(postgres, "MIGRATIONS", postgres.MIGRATIONS[:3])
    old = PostgresStore(postgres_url)
    await old.open()
    written = await old.txn([Put("/tx/global/g1", b"tx"), Put("/tx/active/g1", b"lease"), Put("/config/x", b"c")])
    await old.close()
    monkeypatch.undo()
    store = PostgresStore(postgres_url)
    await store.open()
    rows = store.plain()
    try:
        moved = await rows.get("/tx/active/g1")
        assert moved is not None and moved.value == b"lease" and moved.mod_revision == written.revision
        assert await store.get("/tx/global/g1") is None and await store.get("/config/x") is not None
        after = await rows.txn([Put("/tx/active/g1", b"next")], [Compare("/tx/active/g1", written.revision)])
        assert after.revision > written.revision
    finally:
        await store.close()


async def test_a_call_with_more_keys_than_it_locks_one_by_one_is_still_atomic(
        nodes: tuple[PostgresStore, PostgresStore]) -> None:
    """Past LOCK_KEYS keys a call locks the table instead (the server's lock table is small): it must
    still exclude the small compare-and-sets of another node, and apply whole or not at all."""
    from mezzo.storage.postgres_plain import LOCK_KEYS

    big, small = nodes[0].plain(), nodes[1].plain()
    first = await big.txn([Put(f"/big/{i:04d}", b"0") for i in range(LOCK_KEYS + 100)])
    bumps = 0

    async def bump() -> None:
        nonlocal bumps
        for _ in range(30):
            kv = await small.get("/big/0007")
            assert kv is not None
            try:
                await small.txn([Put("/big/0007", b"%d" % (int(kv.value) + 1))], [Compare("/big/0007", kv.mod_revision)])
            except ConflictError:
                continue
            bumps += 1

    async def rewrite() -> None:
        nonlocal bumps
        for _ in range(5):
            kv = await big.get("/big/0007")
            assert kv is not None
            try:  # every key, compared on the one the small writers bump
                await big.txn([Put(f"/big/{i:04d}", b"%d" % (int(kv.value) + 1 if i == 7 else 0))
                               for i in range(LOCK_KEYS + 100)], [Compare("/big/0007", kv.mod_revision)])
            except ConflictError:
                continue
            bumps += 1

    await asyncio.gather(bump(), bump(), rewrite())
    final = await big.get("/big/0007")
    assert final is not None and int(final.value) == bumps and final.mod_revision > first.revision
    with pytest.raises(ConflictError):  # a refused big call writes none of its keys
        await big.txn([Put(f"/big/{i:04d}", b"x") for i in range(LOCK_KEYS + 100)], [Compare("/big/0007", 1)])
    assert (await big.get("/big/0000")) is not None and (await big.get("/big/0000")).value != b"x"  # type: ignore[union-attr]


async def test_a_write_beside_the_kv_store_commits_both_or_neither(postgres_url: str) -> None:
    """``plain_txn_with``: a change to plain rows and its record in the KV store (an operator's audit
    entry) in one database transaction, so a crash or failure never keeps one without the other."""
    import asyncpg

    store = PostgresStore(postgres_url)
    await store.open()
    rows = store.plain()
    try:
        result = await store.plain_txn_with([Put("/tx/g/a", b"1")], [Compare("/tx/g/a", 0)], [Put("/audit/1", b"r1")])
        kv = await rows.get("/tx/g/a")
        assert kv is not None and kv.mod_revision == result.revision
        assert (await store.get("/audit/1")) is not None

        with pytest.raises(ConflictError):  # the compare fails: no record either
            await store.plain_txn_with([Put("/tx/g/a", b"2")], [Compare("/tx/g/a", 0)], [Put("/audit/2", b"r2")])
        assert await store.get("/audit/2") is None

        store.BATCH = "SELECT * FROM no_such_function($1, $2, $3, $4, $5, $6, $7)"  # the record's write fails
        with pytest.raises(asyncpg.PostgresError):
            await store.plain_txn_with([Put("/tx/g/a", b"3")], [Compare("/tx/g/a", kv.mod_revision)],
                                       [Put("/audit/3", b"r3")])
        del store.BATCH
        again = await rows.get("/tx/g/a")
        assert again is not None and again.value == b"1" and again.mod_revision == kv.mod_revision
        assert await store.get("/audit/3") is None
    finally:
        await store.close()
