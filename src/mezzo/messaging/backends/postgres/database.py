"""Connecting to PostgreSQL for the broker: the URL's schema, the migration, and what errors mean."""

from __future__ import annotations

import contextlib
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mezzo.messaging.backend import TooManyGroupsError
from mezzo.storage.postgres import split_schema

DEFAULT_SCHEMA = "mezzo_mq"
CONNECT_TIMEOUT = 10.0  # seconds to open a connection before the engine counts as unreachable
COMMAND_TIMEOUT = 60.0  # no statement runs longer (retention and topic deletion are the long ones)
RETRYABLE = frozenset({"40001", "40P01"})  # serialization failure, deadlock: the whole call is redone
MIGRATIONS = [(1, "schema.sql")]


class BrokerUnavailable(ConnectionError):
    """PostgreSQL cannot be reached (or went away mid-call)."""


def broker_dsn(url: str) -> tuple[str, str]:
    """The asyncpg DSN and the schema holding the broker's tables (``?schema=``, default ``mezzo_mq``)."""
    if not any(k == "schema" for k, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)):
        url = f"{url}{'&' if '?' in url else '?'}schema={DEFAULT_SCHEMA}"
    return split_schema(url)


def channel_for(schema: str) -> str:
    """The LISTEN/NOTIFY channel of one schema: nodes on other schemas never wake each other."""
    return f"mezzo_mq_{schema}"[:63]


def where(dsn: str) -> str:
    """Host and database of a DSN, for error messages (no credentials)."""
    parts = urlsplit(dsn)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


async def create_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    try:
        # IF NOT EXISTS still races between nodes starting together: the loser sees a duplicate.
        with contextlib.suppress(asyncpg.UniqueViolationError, asyncpg.DuplicateSchemaError):
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    finally:
        await conn.close()


async def migrate(pool: Any, schema: str) -> None:
    """Apply the migrations this schema lacks; nodes starting together take turns."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"mezzo-mq:{schema}")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS mq_schema_migrations"
            " (version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM mq_schema_migrations")}
        for version, name in MIGRATIONS:
            if version not in done:
                sql = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
                await conn.execute(sql)
                await conn.execute("INSERT INTO mq_schema_migrations (version) VALUES ($1)", version)


def translate(exc: Exception, dsn: str) -> Exception:
    """Turn a driver error into what the broker protocol promises its callers."""
    import asyncpg

    state = getattr(exc, "sqlstate", None) or ""
    if state == "MZ404":
        return LookupError(str(exc))
    if state == "MZ429":
        return TooManyGroupsError(str(exc))
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError) or state[:2] in ("08", "57"):
        return BrokerUnavailable(f"PostgreSQL broker at {where(dsn)} is unavailable: {exc}")
    return exc
