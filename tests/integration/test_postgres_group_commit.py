"""The PostgreSQL store's group commit: cancellation, a malformed write in a group, close, and the
key-narrowed wake-ups with keys JSON must escape or that do not fit one NOTIFY.

Writers are made to queue deterministically by holding the ``kv_meta`` row lock from another
connection: the first write's call then waits in the server and the next ones wait in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from mezzo.storage.kv import Compare, Delete, Put, StoreError
from mezzo.storage.postgres import PostgresStore, split_schema
from mezzo.testing.fixtures import wait_for


@contextlib.asynccontextmanager
async def writers_held(url: str) -> AsyncIterator[Any]:
    """Hold the writers' row lock until the block ends; yields ``blocked()``: is a writer waiting for it?"""
    dsn, schema = split_schema(url)
    holder = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    monitor = await asyncpg.connect(dsn)  # not the holder: pg_stat_activity is frozen inside a transaction
    pid = holder.get_server_pid()

    async def blocked() -> bool:
        return bool(await monitor.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", pid))

    try:
        async with holder.transaction():
            await holder.execute("SELECT revision FROM kv_meta WHERE id = 1 FOR UPDATE")
            yield blocked
    finally:
        await holder.close()
        await monitor.close()


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(postgres_url, poll_interval=60)  # only a NOTIFY or a local write wakes a watch
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_write_cancelled_while_queued_is_not_committed(store: PostgresStore, postgres_url: str) -> None:
    """A caller cancelled before its write was sent (e.g. a timeout around a lock acquisition) must be
    able to rely on it not having happened, as before group commit."""
    async with writers_held(postgres_url) as blocked:
        first = asyncio.create_task(store.txn([Put("cancel/first", b"v")]))
        await wait_for(blocked)  # the first call waits in the server
        second = asyncio.create_task(store.txn([Put("cancel/second", b"v")]))
        await wait_for(lambda: store._group.waiting)  # the second waits in the queue
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await second
    await first
    assert await store.get("cancel/second") is None


async def test_a_cancelled_close_does_not_fail_the_writes_it_waited_for(store: PostgresStore,
                                                                        postgres_url: str) -> None:
    """``close()`` waits for queued writes; a close cancelled meanwhile (a shutdown timeout) must not
    take the committer, and with it every waiting writer, down with it."""
    async with writers_held(postgres_url) as blocked:
        first = asyncio.create_task(store.txn([Put("closing/first", b"v")]))
        await wait_for(blocked)
        second = asyncio.create_task(store.txn([Put("closing/second", b"v")]))
        await wait_for(lambda: store._group.waiting)
        closing = asyncio.create_task(store.close())
        await asyncio.sleep(0)  # close() now waits for the committer
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert await store.get("closing/first") is not None and await store.get("closing/second") is not None


async def test_close_completes_after_the_committer_was_cancelled(postgres_url: str) -> None:
    """Whoever cancelled the committer (the loop shutting down, a cancelled close), a later close()
    must still close the pool rather than re-raise that CancelledError."""
    store = PostgresStore(postgres_url)
    await store.open()
    async with writers_held(postgres_url) as blocked:
        write = asyncio.create_task(store.txn([Put("stop/k", b"v")]))
        await wait_for(blocked)
        assert store._group.committer is not None
        store._group.committer.cancel()
        with contextlib.suppress(StoreError):
            await write
    try:
        await store.close()
        assert store._pool is None
    finally:
        if store._pool is not None:
            await store._pool.close()


# checked and found fine ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    ([Put("bad/k", "not bytes")], []),  # type: ignore[arg-type]
    ([Put("bad/k", b"v")], [Compare("bad/k", 2**63)]),  # beyond bigint
], ids=["value", "compare"])
async def test_a_malformed_write_fails_alone(store: PostgresStore, postgres_url: str, bad: tuple[Any, Any]) -> None:
    """A write asyncpg cannot even encode fails only its own caller, not the group it was queued in (asyncpg
    raises its argument errors as a PostgresError, so the refused group is retried one by one)."""
    async with writers_held(postgres_url) as blocked:
        first = asyncio.create_task(store.txn([Put("bad/first", b"v")]))
        await wait_for(blocked)
        queued = [asyncio.create_task(store.txn(*bad))]
        queued += [asyncio.create_task(store.txn([Put(f"bad/good{i}", b"v")])) for i in range(3)]
        await asyncio.sleep(0)
    await first
    results = await asyncio.gather(*queued, return_exceptions=True)
    assert isinstance(results[0], Exception)
    assert [r for r in results[1:] if isinstance(r, BaseException)] == []
    assert len((await store.range("bad/good")).items) == 3


async def test_a_group_with_conflicts_and_missed_deletes_stays_gap_free(store: PostgresStore,
                                                                       postgres_url: str) -> None:
    """Conflicting and write-nothing transactions in a group take no revision; the others get
    consecutive ones, and a watch sees each once, in order."""
    await store.txn([Put("gap/k", b"0")])
    start = (await store.revision())[0] + 1
    stream = store.watch("gap/", start)
    async with writers_held(postgres_url) as blocked:
        first = asyncio.create_task(store.txn([Put("gap/a", b"1")]))
        await wait_for(blocked)
        specs: list[tuple[list[Any], list[Compare]]] = [
            ([Delete("gap/missing")], []),  # writes nothing
            ([Put("gap/b", b"2")], []),
            ([Put("gap/k", b"x")], [Compare("gap/k", 999)]),  # conflicts
            ([Delete("gap/missing2"), Delete("gap/missing3")], []),  # writes nothing
            ([Delete("gap/a")], []),  # deletes what the first wrote
            ([], [Compare("gap/b", 0)]),  # no ops; fails on a key written earlier in the group
            ([Put("gap/b", b"3")], []),  # its previous value is the one written earlier in the group
        ]
        queued = [asyncio.create_task(store.txn(ops, cmps)) for ops, cmps in specs]
        await asyncio.sleep(0)
    base = (await first).revision
    results = await asyncio.gather(*queued, return_exceptions=True)
    assert [getattr(r, "revision", None) for r in results] == [
        base, base + 1, None, base + 1, base + 2, None, base + 3]
    assert (results[6].prev["gap/b"].value, results[6].prev["gap/b"].mod_revision) == (b"2", base + 1)  # type: ignore[union-attr]
    assert (await store.revision())[0] == base + 3
    seen = [await asyncio.wait_for(anext(stream), 10) for _ in range(4)]
    assert [(e.revision, e.type.value, e.key) for e in seen] == [
        (base, "PUT", "gap/a"), (base + 1, "PUT", "gap/b"), (base + 2, "DELETE", "gap/a"), (base + 3, "PUT", "gap/b")]
    await stream.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize("keys", [
    ['esc/"q"\\', "esc/new\nline", "esc/ünï©ødé/✓", "esc/\u2028"],  # JSON must escape, or carries as UTF-8
    [f"esc/{'é' * 400}/{i:02d}" for i in range(12)],  # > 7000 bytes: the bare-revision fallback
], ids=["escaped", "too-big"])
async def test_another_nodes_notify_wakes_the_watch_whatever_the_keys(store: PostgresStore, postgres_url: str,
                                                                     keys: list[str]) -> None:
    writer = PostgresStore(postgres_url)
    await writer.open()
    try:
        start = (await store.revision())[0] + 1
        streams = [store.watch(key, start) for key in keys]  # each watch's prefix is exactly one key
        taking = [asyncio.create_task(anext(s)) for s in streams]
        await asyncio.sleep(0.1)  # parked (if not, they find the events anyway)
        await writer.txn([Put(key, b"v") for key in keys])  # one revision, one NOTIFY naming every key
        events = await asyncio.wait_for(asyncio.gather(*taking), 10)  # poll_interval=60: only the NOTIFY wakes
        assert [e.key for e in events] == keys
        for s in streams:
            await s.aclose()  # type: ignore[attr-defined]
    finally:
        await writer.close()
