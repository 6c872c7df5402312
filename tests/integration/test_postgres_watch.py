"""PostgreSQL engine specifics: NOTIFY wakes watches, the revision check covers a lost NOTIFY, group commit."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from mezzo.storage.kv import Compare, ConflictError, Put
from mezzo.storage.postgres import PostgresStore, split_schema
from mezzo.testing.fixtures import wait_for


async def test_write_whose_notify_is_lost_still_reaches_the_watch(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, poll_interval=0.05)
    await store.open()
    try:
        stream = store.watch("lost/", start=(await store.revision())[0] + 1)
        taking = asyncio.create_task(anext(stream))
        dsn, schema = split_schema(postgres_url)
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
        try:  # the same write transaction, announced on a channel nobody listens to
            await conn.fetch("SELECT * FROM kv_txn($1::text[], $2::bytea[], '{}', '{}', 'nobody')",
                             ["lost/k"], [b"v"])
        finally:
            await conn.close()
        event = await asyncio.wait_for(taking, 10)
        assert (event.key, event.value) == ("lost/k", b"v")
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_writers_arriving_together_share_one_commit(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    calls = []
    apply = store._apply

    async def counting(batch):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        return await apply(batch)

    store._apply = counting  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(*(store.txn([Put(f"group/{i}", b"v")]) for i in range(50)))
        assert sorted(r.revision for r in results) == list(range(results[0].revision, results[0].revision + 50))
        assert sum(calls) == 50 and len(calls) < 50  # the first goes alone, the rest wait for it together
    finally:
        await store.close()


async def test_a_group_the_server_refuses_is_retried_one_by_one(postgres_url: str) -> None:
    """One refused call must not fail every writer in it: each is then applied alone, and only the
    one the server refuses fails (here: any group of more than one, and the writer of key ``bad``)."""
    store = PostgresStore(postgres_url)
    await store.open()
    apply = store._apply

    async def refusing(batch):  # type: ignore[no-untyped-def]
        if len(batch) > 1 or batch[0].ops[0].key == "one/bad":
            raise asyncpg.DataError("refused")
        return await apply(batch)

    store._apply = refusing  # type: ignore[method-assign]
    try:
        before = (await store.revision())[0]
        results = await asyncio.gather(*(store.txn([Put(f"one/{k}", b"v")]) for k in ("a", "bad", "b", "c")),
                                       return_exceptions=True)
        assert isinstance(results[1], asyncpg.DataError)
        assert [await store.get(f"one/{k}") is not None for k in ("a", "bad", "b", "c")] == [True, False, True, True]
        assert (await store.revision())[0] == before + 3
    finally:
        await store.close()


async def test_a_conflict_in_a_group_leaves_the_others_applied(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        await store.txn([Put("mixed/k", b"1")])
        results = await asyncio.gather(
            store.txn([Put("mixed/a", b"v")]),
            store.txn([Put("mixed/k", b"2"), Put("mixed/b", b"v")], [Compare("mixed/k", 0)]),  # it exists: fails
            store.txn([Put("mixed/c", b"v")]),
            return_exceptions=True,
        )
        assert isinstance(results[1], ConflictError) and results[1].key == "mixed/k"
        assert await store.get("mixed/b") is None and (await store.get("mixed/k")).value == b"1"  # type: ignore[union-attr]
        assert (await store.get("mixed/a")) is not None and (await store.get("mixed/c")) is not None
    finally:
        await store.close()


async def test_writes_queued_at_close_are_committed_first(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    writes = [asyncio.create_task(store.txn([Put(f"closing/{i}", b"v")])) for i in range(20)]
    await asyncio.sleep(0)  # queued
    await store.close()
    assert all(not isinstance(r, BaseException) for r in await asyncio.gather(*writes, return_exceptions=True))
    reopened = PostgresStore(postgres_url)
    await reopened.open()
    try:
        assert len((await reopened.range("closing/")).items) == 20
    finally:
        await reopened.close()


@pytest.mark.parametrize("size", [1, 300])
async def test_groups_are_bounded(postgres_url: str, size: int) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        results = await asyncio.gather(*(store.txn([Put(f"bound/{i}", b"v")]) for i in range(size)))
        assert len({r.revision for r in results}) == size
    finally:
        await store.close()


async def test_a_commit_elsewhere_wakes_only_the_watches_its_keys_concern(postgres_url: str) -> None:
    """The NOTIFY of a group commit names its keys: another node queries only for watches under them."""
    writer, reader = PostgresStore(postgres_url), PostgresStore(postgres_url, poll_interval=60)
    await writer.open()
    await reader.open()
    queried: list[str] = []
    events = reader.events

    async def counting(start, prefix="", limit=1000):  # type: ignore[no-untyped-def]
        queried.append(prefix)
        return await events(start, prefix, limit)

    reader.events = counting  # type: ignore[method-assign]
    try:
        start = (await reader.revision())[0] + 1
        concerned, other = reader.watch("near/", start), reader.watch("far/", start)
        taking = asyncio.create_task(anext(concerned))
        parked = asyncio.create_task(anext(other))
        await wait_for(lambda: "near/" in queried and "far/" in queried)  # both made their first query
        await writer.txn([Put("near/k", b"v")])
        event = await asyncio.wait_for(taking, 10)
        assert event.key == "near/k"
        await asyncio.sleep(0.2)
        assert queried.count("far/") == 1 and not parked.done()
        parked.cancel()
        await concerned.aclose()  # type: ignore[attr-defined]
    finally:
        await reader.close()
        await writer.close()
