"""Storage bugs found in review: each test fails on the current code."""

from __future__ import annotations

import asyncio

import pytest

from mezzo.storage.kv import Compare, KVStore, Put, StoreError


async def test_sqlite_writer_survives_a_non_sqlite_error(sqlite_store: KVStore) -> None:
    """A compare key that cannot be bound (lone surrogate) raises UnicodeEncodeError inside the
    writer thread; _commit only catches StoreError/sqlite3.Error, so the thread dies, this
    txn's future is never resolved and every later write hangs forever."""
    with pytest.raises((StoreError, ValueError)):
        await asyncio.wait_for(sqlite_store.txn([Put("a", b"1")], [Compare("\ud800", 0)]), 5)
    # the store must still accept writes afterwards
    res = await asyncio.wait_for(sqlite_store.txn([Put("b", b"2")]), 5)
    assert res.revision >= 1


async def test_sqlite_txn_racing_close_does_not_hang(sqlite_store: KVStore) -> None:
    """close() enqueues the stop sentinel and then awaits the writer join; a txn submitted
    meanwhile passes the `_writer is None` check, lands behind the sentinel and is never
    answered (its awaiter hangs forever instead of getting an error)."""
    await sqlite_store.txn([Put("x", b"0")])
    closing = asyncio.create_task(sqlite_store.close())
    await asyncio.sleep(0)  # close() has put the sentinel and is awaiting the join
    late = asyncio.create_task(sqlite_store.txn([Put("y", b"1")]))
    await closing
    done, _ = await asyncio.wait({late}, timeout=5)
    late.cancel()
    assert done, "txn submitted during close() never completed (neither result nor error)"
    await sqlite_store.open()  # let the fixture close it again


@pytest.mark.parametrize("prefix", ["a\U0010ffff", "a\ud7ff"])
async def test_range_and_watch_prefix_edge_chars(store: KVStore, prefix: str) -> None:
    """prefix_end(): chr(0x10FFFF + 1) raises ValueError; prefix ending in U+D7FF yields a lone
    surrogate (U+D800) that neither SQLite nor asyncpg can encode."""
    key = prefix + "/k"
    await store.txn([Put(key, b"v")])
    got = await store.range(prefix)
    assert [kv.key for kv in got.items] == [key]
    events = await store.events(1, prefix)
    assert [e.key for e in events] == [key]


async def test_empty_prefix_covers_every_key(store: KVStore) -> None:
    """range('') / watch('') use the upper bound '\\U0010ffff', so keys starting with U+10FFFF
    are invisible to a full range and to a watch of everything."""
    await store.txn([Put("\U0010ffff", b"top"), Put("a", b"x")])
    keys = [kv.key for kv in (await store.range("")).items]
    assert "\U0010ffff" in keys
    assert "\U0010ffff" in [e.key for e in await store.events(1, "")]


async def test_postgres_bad_key_is_a_store_error(postgres_url: str) -> None:
    """A NUL in a key: SQLite stores it, PostgreSQL text rejects it with a raw asyncpg error
    (not StoreError/InvalidTxnError), which surfaces as a 500 via the resources API."""
    from mezzo.storage import open_store
    from mezzo.storage.txn import InvalidTxnError

    kv = open_store(postgres_url)
    await kv.open()
    try:
        with pytest.raises((InvalidTxnError, StoreError)):
            await kv.txn([Put("a\x00b", b"v")])
    finally:
        await kv.close()
