"""The shared trace store on PostgreSQL: every node writes and reads the same spans.

Writes use COPY (asyncpg's binary copy), the fastest way into PostgreSQL, one COPY per batch
of concurrent requests (a small group commit); attributes and resources are JSONB so attribute
search uses ``->>``. Same interface and answers as the SQLite store (store.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from mezzo.storage.postgres import split_schema
from mezzo.tracing.model import COLUMNS, STATUS_ERROR, Span
from mezzo.tracing.store import (
    MAX_PENDING,
    Busy,
    Query,
    StoreFailed,
    merge_pairs,
    pair_rows,
    remote_pairs,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
  trace_id text NOT NULL, span_id text NOT NULL, parent_id text NOT NULL, service text NOT NULL,
  name text NOT NULL, kind smallint NOT NULL, start_us bigint NOT NULL, duration_us bigint NOT NULL,
  status smallint NOT NULL, status_message text NOT NULL, attributes jsonb NOT NULL, resource jsonb NOT NULL,
  events jsonb, links jsonb, scope text NOT NULL, trace_state text NOT NULL);
CREATE INDEX IF NOT EXISTS spans_trace ON spans (trace_id);
CREATE INDEX IF NOT EXISTS spans_service_start ON spans (service, start_us);
CREATE INDEX IF NOT EXISTS spans_operation_start ON spans (service, name, start_us);
CREATE INDEX IF NOT EXISTS spans_start ON spans (start_us);
CREATE TABLE IF NOT EXISTS operations (service text, name text, kind smallint, PRIMARY KEY (service, name, kind));
CREATE TABLE IF NOT EXISTS remote_services (service text, remote text, last_us bigint NOT NULL,
  PRIMARY KEY (service, remote));
"""
# as the SQLite store's: one row per (service, peer.service), with the start of its latest span; rows come
# sorted and retention locks them in that order, so nodes writing and deleting together never deadlock
UPSERT_REMOTE = ("INSERT INTO remote_services SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) "
                 "ORDER BY 1, 2 ON CONFLICT (service, remote) "
                 "DO UPDATE SET last_us = greatest(remote_services.last_us, excluded.last_us)")
FORGET_REMOTE = ("DELETE FROM remote_services WHERE (service, remote) IN (SELECT service, remote FROM "
                 "remote_services WHERE $1::bigint IS NULL OR last_us < $1 ORDER BY 1, 2 FOR UPDATE)")
SELECT = ("SELECT trace_id, span_id, parent_id, service, name, kind, start_us, duration_us, status, status_message, "
          "attributes::text, resource::text, coalesce(events::text, ''), coalesce(links::text, ''), scope, trace_state "
          "FROM spans")


def _text(value: str) -> str:
    """PostgreSQL's text and jsonb cannot hold NUL, which OTLP and Zipkin strings may carry: it is stored
    as U+FFFD (a span refused for it would be retried by its exporter for ever, and fail its batch)."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _json(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return orjson.dumps(_without_nul(value)).decode() if "\\u0000" in text else text


class PostgresTraceStore:
    def __init__(self, url: str) -> None:
        self.dsn, self.schema = split_schema(url)
        self._pool: Any = None
        self.pending = 0
        self.written = 0
        self._known_ops: set[tuple[str, str, int]] = set()
        self._queue: list[tuple[list[tuple[Any, ...]], dict[tuple[str, str], int], asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def open(self) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=8,
                                               server_settings={"search_path": self.schema,
                                                                "application_name": "mezzo-traces"})
        async with self._pool.acquire() as conn:
            async with conn.transaction():  # nodes starting together must not race on CREATE ... IF NOT EXISTS
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"mezzo-traces:{self.schema}")
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await conn.execute(SCHEMA)
            rows = await conn.fetch("SELECT service, name, kind FROM operations")
            self._known_ops = {(r[0], r[1], r[2]) for r in rows}

    async def close(self) -> None:
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()

    # writing --------------------------------------------------------------------------------

    async def write(self, spans: list[Span]) -> None:
        if not spans:
            return
        rows = [(s.trace_id, s.span_id, s.parent_id, _text(s.service), _text(s.name), s.kind, s.start_us,
                 s.duration_us, s.status, _text(s.status_message), _json(s.attributes), _json(s.resource),
                 _json(s.events) if s.events else None, _json(s.links) if s.links else None, _text(s.scope),
                 _text(s.trace_state)) for s in spans]
        peers = {(_text(service), _text(peer)): start for (service, peer), start in remote_pairs(spans).items()}
        if self.pending + len(spans) > MAX_PENDING:  # reserved after encoding: an error there holds nothing
            raise Busy(f"{self.pending} spans are waiting to be written")
        self.pending += len(spans)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((rows, peers, done))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        ops = {(_text(s.service), _text(s.name), s.kind) for s in spans} - self._known_ops
        try:
            await done
        finally:
            self.pending -= len(spans)
        if ops:
            async with self._pool.acquire() as conn:
                await conn.executemany("INSERT INTO operations VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", list(ops))
            self._known_ops |= ops

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            records = [row for rows, _, _ in batch for row in rows]
            peers: dict[tuple[str, str], int] = {}
            for _, more, _ in batch:
                merge_pairs(peers, more)
            error: BaseException | None = None
            try:
                async with self._pool.acquire() as conn:
                    if peers:  # first: a COPY that fails after it leaves a name listed a moment, not spans unlisted
                        await conn.execute(UPSERT_REMOTE, *map(list, zip(*pair_rows(peers), strict=True)))
                    await conn.copy_records_to_table("spans", records=records, columns=list(COLUMNS),
                                                     schema_name=self.schema)
                self.written += len(records)
            except Exception as exc:
                error = StoreFailed(f"the trace store could not commit: {exc}")
            for _, _, done in batch:
                if not done.done():
                    done.set_result(None) if error is None else done.set_exception(error)

    # reading --------------------------------------------------------------------------------

    async def services(self) -> list[str]:
        async with self._pool.acquire() as conn:
            return [r[0] for r in await conn.fetch("SELECT DISTINCT service FROM operations ORDER BY service")]

    async def operations(self, service: str, kind: int | None = None) -> list[tuple[str, int]]:
        sql, args = "SELECT name, kind FROM operations WHERE service = $1", [service]
        if kind is not None:
            sql += " AND kind = $2"
            args.append(kind)  # type: ignore[arg-type]
        async with self._pool.acquire() as conn:
            return [(r[0], r[1]) for r in await conn.fetch(sql + " ORDER BY name", *args)]

    async def remote_services(self, service: str) -> list[str]:
        async with self._pool.acquire() as conn:
            return [r[0] for r in await conn.fetch(
                "SELECT remote FROM remote_services WHERE service = $1 ORDER BY remote", service)]

    async def find(self, q: Query) -> list[str]:
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if q.service:
            where.append(f"service = {arg(q.service)}")
        if q.operation:
            where.append(f"name = {arg(q.operation)}")
        if q.start_us is not None:
            where.append(f"start_us >= {arg(q.start_us)}")
        if q.end_us is not None:
            where.append(f"start_us <= {arg(q.end_us)}")
        if q.min_duration_us is not None:
            where.append(f"duration_us >= {arg(q.min_duration_us)}")
        if q.max_duration_us is not None:
            where.append(f"duration_us <= {arg(q.max_duration_us)}")
        if q.errors_only:
            where.append(f"status = {arg(STATUS_ERROR)}")
        for key, value in q.tags.items():
            if key == "error" and value in ("true", "1"):
                where.append(f"status = {arg(STATUS_ERROR)}")
                continue
            k, v = arg(key), arg(value)
            where.append(f"(attributes->>{k} = {v} OR resource->>{k} = {v})")
        for key in q.keys:
            if key == "error":  # Zipkin's error tag is Mezzo's error status
                where.append(f"status = {arg(STATUS_ERROR)}")
            else:
                k = arg(key)
                where.append(f"(attributes ? {k} OR coalesce(events @> jsonb_build_array(jsonb_build_object('name', "
                             f"{k}::text)), false))")
        sql = (f"SELECT trace_id, max(start_us) AS latest FROM spans {'WHERE ' + ' AND '.join(where) if where else ''} "
               f"GROUP BY trace_id ORDER BY latest DESC LIMIT {arg(q.limit)}")
        async with self._pool.acquire() as conn:
            return [r[0] for r in await conn.fetch(sql, *args)]

    async def trace(self, trace_id: str, offset: int = 0, limit: int | None = None) -> list[Span]:
        sql = SELECT + " WHERE trace_id = $1 ORDER BY start_us, span_id"
        args: list[Any] = [trace_id]
        if limit is not None:
            sql += " LIMIT $2 OFFSET $3"
            args += [limit, offset]
        async with self._pool.acquire() as conn:
            return [Span.from_row(tuple(r)) for r in await conn.fetch(sql, *args)]

    async def traces(self, trace_ids: list[str]) -> dict[str, list[Span]]:
        out: dict[str, list[Span]] = {t: [] for t in trace_ids}
        if trace_ids:
            async with self._pool.acquire() as conn:
                for r in await conn.fetch(SELECT + " WHERE trace_id = ANY($1) ORDER BY start_us, span_id", trace_ids):
                    out[r[0]].append(Span.from_row(tuple(r)))
        return out

    async def summary(self, trace_id: str) -> dict[str, Any] | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow("SELECT count(*), min(start_us), max(start_us + duration_us), "
                                      "count(*) FILTER (WHERE status = 2), array_agg(DISTINCT service) "
                                      "FROM spans WHERE trace_id = $1", trace_id)
        if not row or not row[0]:
            return None
        return {"traceId": trace_id, "spans": row[0], "startUs": row[1], "durationUs": row[2] - row[1],
                "errors": row[3], "services": sorted(row[4])}

    async def dependencies(self, start_us: int, end_us: int, latency: bool = False) -> list[dict[str, Any]]:
        from mezzo.tracing.analytics import percentile

        sql = ("SELECT p.service, c.service, c.duration_us, c.status FROM spans c JOIN spans p "
               "ON p.trace_id = c.trace_id AND p.span_id = c.parent_id "
               "WHERE c.start_us BETWEEN $1 AND $2 AND p.service <> c.service")
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(sql, start_us, end_us)
        edges: dict[tuple[str, str], tuple[list[int], int]] = {}
        for parent, child, duration, status in rows:
            durations, errors = edges.get((parent, child), ([], 0))
            durations.append(duration)
            edges[(parent, child)] = (durations, errors + (status == STATUS_ERROR))
        out = []
        for (parent, child), (durations, errors) in sorted(edges.items()):
            edge: dict[str, Any] = {"parent": parent, "child": child, "callCount": len(durations), "errorCount": errors}
            if latency:
                durations.sort()
                edge.update(p50Us=percentile(durations, 50), p95Us=percentile(durations, 95),
                            p99Us=percentile(durations, 99))
            out.append(edge)
        return out

    async def red(self, start_us: int, end_us: int, service: str | None = None) -> list[tuple[str, str, int, int]]:
        sql = ("SELECT service, name, duration_us, status FROM spans WHERE start_us BETWEEN $1 AND $2 "
               "AND (kind IN (2, 5) OR parent_id = '')")
        args: list[Any] = [start_us, end_us]
        if service:
            sql += " AND service = $3"
            args.append(service)
        async with self._pool.acquire() as conn:
            return [tuple(r) for r in await conn.fetch(sql, *args)]  # type: ignore[misc]

    async def enforce_retention(self, max_age_s: float, max_spans: int | None, max_bytes: int | None = None) -> int:
        """As the SQLite store's; the size is the table's with its indexes (``pg_total_relation_size``),
        whose freed space autovacuum makes reusable."""
        cutoff = int((time.time() - max_age_s) * 1_000_000)

        async def delete_before(conn: Any, edge: int | None) -> int:
            """Spans starting before ``edge`` (None: all) and the remote services only they called, in one
            transaction, as in the SQLite store."""
            async with conn.transaction():
                if edge is None:
                    gone = await conn.execute("DELETE FROM spans")
                else:
                    gone = await conn.execute("DELETE FROM spans WHERE start_us < $1", edge)
                await conn.execute(FORGET_REMOTE, edge)
            return int(gone.split()[-1])

        async def drop_oldest(conn: Any, count: int, keep: int) -> int:
            if keep <= 0:
                return await delete_before(conn, None)
            edge = await conn.fetchval("SELECT start_us FROM spans ORDER BY start_us LIMIT 1 OFFSET $1", count - keep)
            if edge is None:
                return 0
            return await delete_before(conn, edge)

        async with self._pool.acquire() as conn:
            gone = await delete_before(conn, cutoff)
            if max_spans is not None or max_bytes is not None:
                count = await conn.fetchval("SELECT count(*) FROM spans")
                if max_spans is not None and count > max_spans:
                    gone += await drop_oldest(conn, count, max_spans)
                    count = min(count, max_spans)
                if max_bytes is not None and count:
                    used = await conn.fetchval("SELECT pg_total_relation_size('spans')")
                    if used > max_bytes:
                        gone += await drop_oldest(conn, count, int(count * max_bytes / used * 0.95))
        return gone
