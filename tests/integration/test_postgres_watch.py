"""Watches on PostgreSQL: NOTIFY wakes them, and the store's revision check covers a lost NOTIFY."""

from __future__ import annotations

import asyncio

import asyncpg

from mezzo.storage.postgres import PostgresStore, split_schema


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
