"""Reachability checks and clean-up for the real engines tests share."""

from __future__ import annotations

import asyncio
from typing import Any

from mezzo.storage.postgres import split_schema


async def postgres_problem(url: str) -> str | None:
    """None when PostgreSQL answers at ``url``, else why not."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install 'mezzo[postgres]')"
    dsn, _ = split_schema(url)
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


async def drop_postgres_schema(url: str, schema: str) -> None:
    import asyncpg

    dsn, _ = split_schema(url)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def redis_problem(url: str) -> str | None:
    try:
        import redis.asyncio as aioredis
    except ImportError:
        return "redis is not installed (pip install 'mezzo[redis]')"
    client = aioredis.from_url(url, socket_connect_timeout=3)
    try:
        await client.ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    return None


def delete_redis_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        batch = list(client.scan_iter(match=f"{prefix}*", count=500))
        for start in range(0, len(batch), 500):
            client.delete(*batch[start : start + 500])
    finally:
        client.close()


async def _nats_connect(url: str) -> Any:
    """One connection attempt, or its error. nats-py retries a refused connection for ever when
    ``max_reconnect_attempts`` is 0 (it counts only above 0): try once more, then give up."""
    import nats

    failures: list[Exception] = []

    async def record(exc: Exception) -> None:  # instead of nats-py's traceback per attempt
        failures.append(exc)

    try:
        return await asyncio.wait_for(
            nats.connect(url, connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=1,
                         reconnect_time_wait=0.1, error_cb=record),
            10,
        )
    except Exception as exc:
        raise (failures[-1] if failures else exc) from None


async def nats_problem(url: str) -> str | None:
    try:
        import nats  # noqa: F401
    except ImportError:
        return "nats-py is not installed (pip install 'mezzo[nats]')"
    try:
        client = await _nats_connect(url)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        await client.jetstream().account_info()
    except Exception as exc:
        return f"JetStream unavailable: {type(exc).__name__}: {exc}"
    finally:
        await client.close()
    return None


async def delete_nats_streams(url: str, prefix: str) -> None:
    """Delete every JetStream stream whose name starts with ``prefix`` (KV buckets included: ``KV_<prefix>...``)."""
    client = await _nats_connect(url)
    try:
        js = client.jetstream()
        for info in await js.streams_info():
            name = info.config.name or ""
            if name.startswith((prefix, f"KV_{prefix}", f"OBJ_{prefix}")):
                await js.delete_stream(name)
    finally:
        await client.close()
