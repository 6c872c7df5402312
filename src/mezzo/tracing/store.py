"""The embedded trace store: SQLite in the data dir, written by one thread in group commits.

SQLite was chosen over a home-made file format because it gives indexes, transactions and ad-hoc
queries for free, and because batched inserts in one transaction reach tens of thousands of spans
per second (see docs/benchmarks.md). Spans are indexed by trace id, by (service, start) and by
(service, operation, start); attribute search filters the rows of that range with json_extract.
Writes wait for their commit (WAL, synchronous=NORMAL: a crashed process loses nothing committed).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mezzo.tracing.model import COLUMNS, STATUS_ERROR, Span

MAX_PENDING = 200_000  # spans waiting for the writer; beyond it ingest answers 429
BATCH = 20_000

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS spans ({", ".join(COLUMNS)});
CREATE INDEX IF NOT EXISTS spans_trace ON spans (trace_id);
CREATE INDEX IF NOT EXISTS spans_service_start ON spans (service, start_us);
CREATE INDEX IF NOT EXISTS spans_operation_start ON spans (service, name, start_us);
CREATE INDEX IF NOT EXISTS spans_start ON spans (start_us);
CREATE TABLE IF NOT EXISTS operations (service TEXT, name TEXT, kind INTEGER, PRIMARY KEY (service, name, kind))
    WITHOUT ROWID;
"""


class Busy(Exception):
    """The writer is behind: the client should retry later."""


@dataclass
class Query:
    service: str | None = None
    operation: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    min_duration_us: int | None = None
    max_duration_us: int | None = None
    start_us: int | None = None
    end_us: int | None = None
    errors_only: bool = False
    limit: int = 20


class TraceStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[tuple[list[tuple[Any, ...]], Callable[[BaseException | None], None]] | None] = \
            queue.SimpleQueue()
        self.pending = 0
        self._lock = threading.Lock()
        self._known_ops: set[tuple[str, str, int]] = set()
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mezzo-traces-read")
        self._local = threading.local()
        self.written = 0

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: index pages stay in memory while spans pour in
        return conn

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        conn.executescript(SCHEMA)
        self._known_ops = {tuple(r) for r in conn.execute("SELECT service, name, kind FROM operations")}  # type: ignore[misc]
        self._writer = threading.Thread(target=self._write_loop, args=(conn,), name="mezzo-traces-write", daemon=True)
        self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join)
        self._readers.shutdown(wait=True)

    # writing --------------------------------------------------------------------------------

    async def write(self, spans: list[Span]) -> None:
        """Store the spans; returns once they are committed. Raises Busy when the writer is behind."""
        if not spans:
            return
        with self._lock:
            if self.pending + len(spans) > MAX_PENDING:
                raise Busy(f"{self.pending} spans are waiting to be written")
            self.pending += len(spans)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished(exc: BaseException | None) -> None:
            def settle() -> None:
                if done.done():
                    return
                if exc is None:
                    done.set_result(None)
                else:
                    done.set_exception(exc)
            loop.call_soon_threadsafe(settle)

        ops = {(s.service, s.name, s.kind) for s in spans} - self._known_ops
        rows = [s.row() for s in spans]
        if ops:
            rows.append(("__ops__", *ops))  # type: ignore[arg-type]
        self._queue.put((rows, finished))
        await done

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        insert = f"INSERT INTO spans VALUES ({', '.join('?' * len(COLUMNS))})"
        while True:
            item = self._queue.get()
            if item is None:
                conn.close()
                return
            batch = [item]
            size = len(item[0])
            while size < BATCH:  # group commit: everything queued meanwhile goes in the same transaction
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
                size += len(nxt[0])
            spans, ops = [], set()
            for rows, _ in batch:
                for row in rows:
                    if row[0] == "__ops__":
                        ops.update(row[1:])
                    else:
                        spans.append(row)
            error: BaseException | None = None
            try:
                conn.execute("BEGIN")
                conn.executemany(insert, spans)
                if ops:
                    conn.executemany("INSERT OR IGNORE INTO operations VALUES (?, ?, ?)", list(ops))
                conn.execute("COMMIT")
                self._known_ops |= ops
                self.written += len(spans)
            except sqlite3.Error as exc:
                error = exc
                conn.execute("ROLLBACK") if conn.in_transaction else None
            with self._lock:
                self.pending -= sum(len(r) for r, _ in batch)
            for _, finished in batch:
                finished(error)

    # reading --------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._readers, lambda: fn(self._conn()))

    async def services(self) -> list[str]:
        return await self._read(lambda c: [r[0] for r in c.execute(
            "SELECT DISTINCT service FROM operations ORDER BY service")])  # type: ignore[no-any-return]

    async def operations(self, service: str, kind: int | None = None) -> list[tuple[str, int]]:
        sql, args = "SELECT name, kind FROM operations WHERE service = ?", [service]
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        return await self._read(lambda c: [(r[0], r[1]) for r in c.execute(sql + " ORDER BY name", args)])  # type: ignore[no-any-return]

    async def find(self, q: Query) -> list[str]:
        """Trace ids matching the query, newest first (a trace matches when one of its spans does)."""
        where, args = [], []
        if q.service:
            where.append("service = ?")
            args.append(q.service)
        if q.operation:
            where.append("name = ?")
            args.append(q.operation)
        if q.start_us is not None:
            where.append("start_us >= ?")
            args.append(q.start_us)
        if q.end_us is not None:
            where.append("start_us <= ?")
            args.append(q.end_us)
        if q.min_duration_us is not None:
            where.append("duration_us >= ?")
            args.append(q.min_duration_us)
        if q.max_duration_us is not None:
            where.append("duration_us <= ?")
            args.append(q.max_duration_us)
        if q.errors_only:
            where.append("status = ?")
            args.append(STATUS_ERROR)
        for key, value in q.tags.items():
            if key == "error" and value in ("true", "1"):
                where.append("status = ?")
                args.append(STATUS_ERROR)
                continue
            path = '$."' + key.replace('"', '""') + '"'
            where.append("(CAST(json_extract(attributes, ?) AS TEXT) = ? OR CAST(json_extract(resource, ?) AS TEXT) = ?)")
            args += [path, value, path, value]
        sql = ("SELECT trace_id, MAX(start_us) AS latest FROM spans" + (" WHERE " + " AND ".join(where) if where else "")
               + " GROUP BY trace_id ORDER BY latest DESC LIMIT ?")
        args.append(q.limit)
        return await self._read(lambda c: [r[0] for r in c.execute(sql, args)])  # type: ignore[no-any-return]

    async def trace(self, trace_id: str, offset: int = 0, limit: int | None = None) -> list[Span]:
        sql = f"SELECT {', '.join(COLUMNS)} FROM spans WHERE trace_id = ? ORDER BY start_us, span_id"
        args: list[Any] = [trace_id]
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [limit, offset]
        return await self._read(lambda c: [Span.from_row(r) for r in c.execute(sql, args)])  # type: ignore[no-any-return]

    async def traces(self, trace_ids: list[str]) -> dict[str, list[Span]]:
        if not trace_ids:
            return {}
        marks = ", ".join("?" * len(trace_ids))
        sql = f"SELECT {', '.join(COLUMNS)} FROM spans WHERE trace_id IN ({marks}) ORDER BY start_us, span_id"

        def run(c: sqlite3.Connection) -> dict[str, list[Span]]:
            out: dict[str, list[Span]] = {t: [] for t in trace_ids}
            for row in c.execute(sql, trace_ids):
                out[row[0]].append(Span.from_row(row))
            return out

        return await self._read(run)  # type: ignore[no-any-return]

    async def summary(self, trace_id: str) -> dict[str, Any] | None:
        def run(c: sqlite3.Connection) -> dict[str, Any] | None:
            row = c.execute("SELECT COUNT(*), MIN(start_us), MAX(start_us + duration_us), SUM(status = 2) "
                            "FROM spans WHERE trace_id = ?", (trace_id,)).fetchone()
            if not row or not row[0]:
                return None
            services = [r[0] for r in c.execute("SELECT DISTINCT service FROM spans WHERE trace_id = ?", (trace_id,))]
            return {"traceId": trace_id, "spans": row[0], "startUs": row[1], "durationUs": row[2] - row[1],
                    "errors": row[3] or 0, "services": sorted(services)}
        return await self._read(run)  # type: ignore[no-any-return]

    async def dependencies(self, start_us: int, end_us: int, latency: bool = False) -> list[dict[str, Any]]:
        """Calls between services: a span whose parent is in another service is one call parent -> child;
        with ``latency``, the p50/p95/p99 of those child spans' durations per edge."""
        from mezzo.tracing.analytics import percentile

        sql = ("SELECT p.service, c.service, c.duration_us, c.status FROM spans c JOIN spans p "
               "ON p.trace_id = c.trace_id AND p.span_id = c.parent_id "
               "WHERE c.start_us BETWEEN ? AND ? AND p.service != c.service")

        def run(c: sqlite3.Connection) -> list[dict[str, Any]]:
            edges: dict[tuple[str, str], tuple[list[int], int]] = {}
            for parent, child, duration, status in c.execute(sql, (start_us, end_us)):
                durations, errors = edges.get((parent, child), ([], 0))
                durations.append(duration)
                edges[(parent, child)] = (durations, errors + (status == STATUS_ERROR))
            out = []
            for (parent, child), (durations, errors) in sorted(edges.items()):
                edge: dict[str, Any] = {"parent": parent, "child": child, "callCount": len(durations),
                                        "errorCount": errors}
                if latency:
                    durations.sort()
                    edge.update(p50Us=percentile(durations, 50), p95Us=percentile(durations, 95),
                                p99Us=percentile(durations, 99))
                out.append(edge)
            return out

        return await self._read(run)  # type: ignore[no-any-return]

    async def red(self, start_us: int, end_us: int, service: str | None = None) -> list[tuple[str, str, int, int]]:
        """(service, operation, duration, status) of entry spans in the window (see analytics.py)."""
        sql = ("SELECT service, name, duration_us, status FROM spans WHERE start_us BETWEEN ? AND ? "
               "AND (kind IN (2, 5) OR parent_id = '')")
        args: list[Any] = [start_us, end_us]
        if service:
            sql += " AND service = ?"
            args.append(service)
        return await self._read(lambda c: [tuple(r) for r in c.execute(sql, args)])  # type: ignore[no-any-return]

    async def enforce_retention(self, max_age_s: float, max_spans: int | None) -> int:
        """Delete spans older than the age, then the oldest beyond ``max_spans``; returns how many went."""
        cutoff = int((time.time() - max_age_s) * 1_000_000)

        def run(c: sqlite3.Connection) -> int:
            gone = c.execute("DELETE FROM spans WHERE start_us < ?", (cutoff,)).rowcount
            if max_spans is not None:
                count = c.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
                if count > max_spans:
                    edge = c.execute("SELECT start_us FROM spans ORDER BY start_us LIMIT 1 OFFSET ?",
                                     (count - max_spans,)).fetchone()
                    if edge:
                        gone += c.execute("DELETE FROM spans WHERE start_us < ?", (edge[0],)).rowcount
            return int(gone)

        return await self._read(run)  # type: ignore[no-any-return]
