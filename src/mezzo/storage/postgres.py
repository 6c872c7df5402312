"""The shared KV engine on PostgreSQL (asyncpg): writers serialise on one row, NOTIFY wakes watchers."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mezzo.storage.kv import (
    CompactedError,
    Compare,
    ConflictError,
    Delete,
    Event,
    EventType,
    KeyValue,
    Op,
    Put,
    RangeResult,
    TxnResult,
    prefix_end,
)
from mezzo.storage.txn import check_key, check_ops, check_range
from mezzo.storage.watch import ChangeSignal, watch_store, whole_revisions

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE kv (
            key TEXT COLLATE "C" PRIMARY KEY, value BYTEA NOT NULL,
            create_rev BIGINT NOT NULL, mod_rev BIGINT NOT NULL, version BIGINT NOT NULL
        );
        CREATE TABLE kv_events (
            rev BIGINT NOT NULL, seq INT NOT NULL, key TEXT COLLATE "C" NOT NULL,
            type TEXT NOT NULL, value BYTEA, prev_value BYTEA, PRIMARY KEY (rev, seq)
        );
        CREATE TABLE kv_meta (
            id INT PRIMARY KEY CHECK (id = 1),
            revision BIGINT NOT NULL, compact_revision BIGINT NOT NULL
        );
        INSERT INTO kv_meta VALUES (1, 0, 0);
        """,
    ),
]

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def split_schema(url: str) -> tuple[str, str]:
    """Take Mezzo's ``schema`` query parameter out of a PostgreSQL URL (default ``public``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), "public")
    if not _SCHEMA.match(schema):
        raise ValueError(f"invalid schema name {schema!r}: use lowercase letters, digits and _")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def _kv(row: Any) -> KeyValue:
    return KeyValue(row["key"], bytes(row["value"]), row["create_rev"], row["mod_rev"], row["version"])


def _event(row: Any) -> Event:
    return Event(
        revision=row["rev"],
        type=EventType(row["type"]),
        key=row["key"],
        value=bytes(row["value"]) if row["value"] is not None else None,
        prev_value=bytes(row["prev_value"]) if row["prev_value"] is not None else None,
    )


class PostgresStore:
    """KVStore on PostgreSQL. Every writer locks the single ``kv_meta`` row, so commit order is revision order."""

    def __init__(self, url: str, *, poll_interval: float = 1.0, pool_size: int = 10) -> None:
        self.url = url
        self.dsn, self.schema = split_schema(url)
        self.poll_interval = poll_interval
        self.pool_size = pool_size
        self.channel = f"mezzo_kv_{self.schema}"[:63]
        self._pool: Any = None
        self._listener: Any = None
        self._listen_task: asyncio.Task[None] | None = None
        self._signal: ChangeSignal | None = None

    async def open(self) -> None:
        import asyncpg

        self._signal = ChangeSignal()
        settings = {"search_path": self.schema, "application_name": "mezzo"}
        first = await asyncpg.connect(self.dsn)
        try:
            # IF NOT EXISTS still races between nodes starting together: the loser sees a duplicate.
            with contextlib.suppress(asyncpg.UniqueViolationError, asyncpg.DuplicateSchemaError):
                await first.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        finally:
            await first.close()
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=self.pool_size, server_settings=settings
        )
        await self._migrate()
        self._listen_task = asyncio.create_task(self._listen(), name="mezzo-pg-listen")

    async def close(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
            self._listen_task = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ready(self) -> bool:
        try:
            await self._pool.fetchval("SELECT 1")
        except Exception:
            return False
        return True

    async def _migrate(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            # Several nodes may start at once: one migrates, the others wait here.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"mezzo:{self.schema}")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, sql in MIGRATIONS:
                if version not in done:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)

    async def _listen(self) -> None:
        """Hold a LISTEN connection; reconnect with backoff. Polling covers any gap."""
        import asyncpg

        assert self._signal is not None
        delay = 0.5
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn)
                await conn.add_listener(self.channel, lambda *_: self._signal.notify())  # type: ignore[union-attr]
                delay = 0.5
                self._signal.notify()  # changes may have happened while disconnected
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 15)
                    if not lost.is_set():
                        await conn.execute("SELECT 1", timeout=5)  # notice a silently dropped link
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close())

    # reads ---------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        check_key(key)
        row = await self._pool.fetchrow(
            "SELECT key, value, create_rev, mod_rev, version FROM kv WHERE key = $1", key
        )
        return _kv(row) if row else None

    async def range(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> RangeResult:
        check_range(prefix, limit)
        low = prefix if start_after is None or start_after < prefix else start_after
        op = ">" if start_after is not None and low == start_after else ">="
        sql = (
            f"SELECT key, value, create_rev, mod_rev, version FROM kv"
            f" WHERE key {op} $1 AND ($2::text IS NULL OR key < $2) ORDER BY key"
        )
        args: list[Any] = [low, prefix_end(prefix)]
        if limit is not None:
            sql += " LIMIT $3"
            args.append(limit + 1)
        async with self._pool.acquire() as conn, conn.transaction(
            isolation="repeatable_read", readonly=True
        ):
            revision = await conn.fetchval("SELECT revision FROM kv_meta")
            rows = await conn.fetch(sql, *args)
        more = limit is not None and len(rows) > limit
        return RangeResult([_kv(r) for r in rows[:limit]], revision, more)

    async def revision(self) -> tuple[int, int]:
        row = await self._pool.fetchrow("SELECT revision, compact_revision FROM kv_meta")
        return row["revision"], row["compact_revision"]

    async def events(self, start: int, prefix: str = "", limit: int = 1000) -> list[Event]:
        check_range(prefix, limit)
        start = min(max(start, 1), 2**62)
        end = prefix_end(prefix)
        select = (
            "SELECT rev, type, key, value, prev_value FROM kv_events"
            " WHERE rev >= $1 AND rev <= $2 AND key >= $3 AND ($4::text IS NULL OR key < $4) ORDER BY rev, seq"
        )
        async with self._pool.acquire() as conn, conn.transaction(
            isolation="repeatable_read", readonly=True
        ):
            compact = await conn.fetchval("SELECT compact_revision FROM kv_meta")
            if start <= compact:
                raise CompactedError(start, compact)
            rows = await conn.fetch(select + " LIMIT $5", start, 2**62, prefix, end, limit)
            events = [_event(r) for r in rows]
            page = whole_revisions(events, limit)
            if events and not page:
                rev = events[0].revision
                page = [_event(r) for r in await conn.fetch(select, rev, rev, prefix, end)]
        return page

    def watch(self, prefix: str = "", start: int | None = None) -> AsyncIterator[Event]:
        return watch_store(self, self._signal, prefix, start, self.poll_interval)

    # writes --------------------------------------------------------------------

    async def txn(self, ops: Sequence[Op], compares: Sequence[Compare] = ()) -> TxnResult:
        check_ops(ops, compares)
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval("SELECT revision FROM kv_meta WHERE id = 1 FOR UPDATE")
            if compares:
                rows = await conn.fetch(
                    "SELECT key, mod_rev FROM kv WHERE key = ANY($1::text[])",
                    [c.key for c in compares],
                )
                actual = {r["key"]: r["mod_rev"] for r in rows}
                for compare in compares:
                    if actual.get(compare.key, 0) != compare.mod_revision:
                        raise ConflictError(
                            compare.key, compare.mod_revision, actual.get(compare.key, 0)
                        )
            rows = await conn.fetch(
                "SELECT key, value, create_rev, mod_rev, version FROM kv WHERE key = ANY($1::text[])",
                [op.key for op in ops],
            )
            prev = {r["key"]: _kv(r) for r in rows}
            rev = current + 1
            upserts: list[tuple[str, bytes, int]] = []
            deletes: list[str] = []
            events: list[tuple[int, int, str, str, bytes | None, bytes | None]] = []
            for op in ops:
                old = prev.get(op.key)
                if isinstance(op, Put):
                    upserts.append((op.key, op.value, rev))
                    events.append((rev, len(events), op.key, "PUT", op.value, old and old.value))
                elif isinstance(op, Delete) and old is not None:
                    deletes.append(op.key)
                    events.append((rev, len(events), op.key, "DELETE", None, old.value))
            if not events:
                return TxnResult(current, prev)
            if upserts:
                await conn.executemany(
                    "INSERT INTO kv (key, value, create_rev, mod_rev, version) VALUES ($1, $2, $3, $3, 1)"
                    " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value,"
                    " mod_rev = EXCLUDED.mod_rev, version = kv.version + 1",
                    upserts,
                )
            if deletes:
                await conn.execute("DELETE FROM kv WHERE key = ANY($1::text[])", deletes)
            await conn.executemany(
                "INSERT INTO kv_events (rev, seq, key, type, value, prev_value)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                events,
            )
            await conn.execute("UPDATE kv_meta SET revision = $1 WHERE id = 1", rev)
            await conn.execute("SELECT pg_notify($1, $2)", self.channel, str(rev))
        return TxnResult(rev, prev)

    async def compact(self, revision: int) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            current, compacted = await conn.fetchrow(
                "SELECT revision, compact_revision FROM kv_meta WHERE id = 1 FOR UPDATE"
            )
            target = min(revision, current)
            if target > compacted:
                await conn.execute("DELETE FROM kv_events WHERE rev <= $1", target)
                await conn.execute("UPDATE kv_meta SET compact_revision = $1 WHERE id = 1", target)
