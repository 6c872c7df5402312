"""The backend fixtures give each test its own isolated place on the shared servers."""

from __future__ import annotations

import uuid

import asyncpg
import nats
import redis.asyncio as aioredis

from mezzo.storage.postgres import split_schema


async def test_postgres_schema_is_private(postgres_url: str) -> None:
    dsn, schema = split_schema(postgres_url)
    assert schema.startswith("t_")
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'CREATE TABLE "{schema}".probe (x int)')
        assert await conn.fetchval("SELECT count(*) FROM probe") == 0
    finally:
        await conn.close()


async def test_redis_prefix(redis_url: str, redis_prefix: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        await client.set(redis_prefix + "k", "v")
        assert await client.get(redis_prefix + "k") == b"v"
    finally:
        await client.aclose()


async def test_nats_jetstream(nats_url: str) -> None:
    client = await nats.connect(nats_url)
    stream = f"MEZZO_TEST_{uuid.uuid4().hex[:8].upper()}"
    try:
        js = client.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        ack = await js.publish(f"{stream}.x", b"hello")
        assert ack.stream == stream and ack.seq == 1
    finally:
        await client.jetstream().delete_stream(stream)
        await client.close()
