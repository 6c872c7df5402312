"""The embedded trace store: SQLite in the data dir, written by one thread in group commits.

SQLite was chosen over a home-made file format because it gives indexes, transactions and ad-hoc
queries for free. A row holds what queries filter on as columns (ids, service, operation, kind,
times, status) and the rest as it came: an OTLP span's own protobuf message (a BLOB in
``attributes``), or JSON text for Zipkin and OTLP/JSON. Three indexes are written per span: trace
id, (service, start) and start; operation, duration and attribute filters are checked along the
(service, start) scan, newest first, which stops once ``limit`` traces are found.

Durability: WAL with synchronous=NORMAL. A write returns only after the COMMIT holding its spans,
so a crash of the process loses nothing acknowledged; a power loss or OS crash may lose the last
commits (WAL is synced at checkpoints, not at each commit). Requests queued while a commit runs go
into the next one together (group commit, up to ``BATCH`` spans).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog

from mezzo.tracing.model import (
    COLUMNS,
    STATUS_ERROR,
    Span,
    attribute_text,
    raw_attribute,
    raw_has_key,
)

log = structlog.get_logger("mezzo.tracing")
MAX_PENDING = 200_000  # spans waiting for the writer; beyond it ingest answers 429
BATCH = 20_000
PAGE_SIZE = 16384
WAL_BACKSTOP = 4096  # pages (64 MiB): past this the writer checkpoints itself, as SQLite does by default at 1000
CHECKPOINT_EVERY = 1.0  # seconds between checkpoints when nothing is committed (a wake-up, mostly idle)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS spans ({", ".join(COLUMNS)});
CREATE INDEX IF NOT EXISTS spans_trace ON spans (trace_id);
CREATE INDEX IF NOT EXISTS spans_service_start ON spans (service, start_us);
DROP INDEX IF EXISTS spans_operation_start;
CREATE INDEX IF NOT EXISTS spans_start ON spans (start_us);
CREATE TABLE IF NOT EXISTS operations (service TEXT, name TEXT, kind INTEGER, PRIMARY KEY (service, name, kind))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS remote_services (service TEXT, remote TEXT, last_us INTEGER, PRIMARY KEY (service, remote))
    WITHOUT ROWID;
"""
UPSERT_REMOTE = ("INSERT INTO remote_services VALUES (?, ?, ?) ON CONFLICT (service, remote) "
                 "DO UPDATE SET last_us = max(last_us, excluded.last_us)")
"""remote_services: the services a service calls (Zipkin's remoteServices), kept at write time like
operations: a few rows per commit, one per (service, peer.service) in it, each with the start of the pair's
latest span, so retention, which deletes spans by start, deletes a pair with its last span. Spans stored
before the table existed are not in it."""


def encode_rows(spans: list[Span]) -> list[tuple[Any, ...]]:
    """Rows for the spans table; a resource shared by the spans of one request is encoded once."""
    resources: dict[int, str] = {}
    rows = []
    for span in spans:
        key = id(span.resource)
        encoded = resources.get(key)
        if encoded is None:
            encoded = resources[key] = orjson.dumps(span.resource).decode()
        rows.append(span.row(encoded))
    return rows


ROW = "(" + ", ".join("?" * len(COLUMNS)) + ")"
ROWS_PER_INSERT = 256  # 4096 parameters, far below SQLite's 32766


def insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert with many rows per statement: one sqlite3_step (one release of the GIL, one wait to take it
    back while the event loop decodes requests) per 256 rows instead of per row; about 1.5x the rate of
    executemany alone and 2x beside a busy event loop."""
    for at in range(0, len(rows), ROWS_PER_INSERT):
        part = rows[at:at + ROWS_PER_INSERT]
        conn.execute(f"INSERT INTO spans VALUES {', '.join([ROW] * len(part))}",
                     list(itertools.chain.from_iterable(part)))


def _attribute_is(attributes: bytes | str | None, key: str, value: str) -> bool:
    """SQL ``mezzo_attr_is(attributes, key, value)``: whether a span attribute, as text (booleans
    ``true``/``false``), equals ``value``; from an OTLP message or JSON. A row whose bytes do not even
    contain the key is skipped before decoding: most rows of a search are such rows."""
    if isinstance(attributes, bytes):
        if key.encode() not in attributes:
            return False
        return raw_attribute(attributes, key) == value
    if not attributes or (key not in attributes and _verbatim_in_json(key)):
        return False
    return attribute_text(orjson.loads(attributes).get(key)) == value


def _has_key(attributes: bytes | str | None, events: str | None, key: str) -> bool:
    """SQL ``mezzo_has_key(attributes, events, key)``: whether a span has the attribute ``key`` or an
    event (a Zipkin annotation) named ``key``; the same byte pre-check as ``_attribute_is``."""
    if isinstance(attributes, bytes):
        return key.encode() in attributes and raw_has_key(attributes, key)
    if attributes and (key in attributes or not _verbatim_in_json(key)) and key in orjson.loads(attributes):
        return True
    if not events or (key not in events and _verbatim_in_json(key)):
        return False
    return any(event.get("name") == key for event in orjson.loads(events))


_PEER_KEY = b"\n\x0cpeer.service"  # KeyValue.key (field 1, 12 bytes), as encoders write it: first


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def raw_peer_service(raw: bytes) -> str | None:
    """The ``peer.service`` attribute of a stored OTLP Span message, read from its bytes when laid out as
    every encoder writes it (a span attribute, field 9, whose key comes first and whose value is a short
    string): decoding the whole message costs more than the rest of the insert. Any other layout (an
    event's attribute of that name, a long or non-string value) is decoded in full."""
    if b"peer.service" not in raw:  # most spans: one scan of the bytes
        return None
    at = raw.find(_PEER_KEY)
    try:
        if at >= 2 and raw[at - 2] == 0x4A and raw[at + 14] == 0x12:
            size, value_at = _varint(raw, at + 15)
            end = value_at + size
            if raw[value_at] == 0x0A and raw[at - 1] == end - at:
                length, text_at = _varint(raw, value_at + 1)
                if text_at + length == end:
                    return raw[text_at:end].decode()
    except (IndexError, UnicodeDecodeError):
        pass
    return raw_attribute(raw, "peer.service")


def peer_service(span: Span) -> str:
    """What Zipkin calls the span's remoteEndpoint.serviceName: its ``peer.service`` attribute as text."""
    if span.raw:
        return raw_peer_service(span.raw) or ""
    return attribute_text(span.attributes.get("peer.service")) or ""


def remote_pairs(spans: list[Span]) -> dict[tuple[str, str], int]:
    """(service, peer.service) of the spans that name a peer, each with the latest start."""
    out: dict[tuple[str, str], int] = {}
    for span in spans:
        peer = peer_service(span)
        if peer and out.get((span.service, peer), -1) < span.start_us:
            out[(span.service, peer)] = span.start_us
    return out


def merge_pairs(into: dict[tuple[str, str], int], more: dict[tuple[str, str], int]) -> None:
    for key, start in more.items():
        if into.get(key, -1) < start:
            into[key] = start


def pair_rows(pairs: dict[tuple[str, str], int]) -> list[tuple[str, str, int]]:
    """remote_services rows, sorted: writers (and retention) lock them in the same order."""
    return sorted((service, remote, start) for (service, remote), start in pairs.items())


def _verbatim_in_json(key: str) -> bool:
    """Whether orjson writes ``key`` as it is (no escapes), so a text search for it is a fair pre-check."""
    return key.isprintable() and '"' not in key and "\\" not in key


def connect(path: Path) -> sqlite3.Connection:
    """A connection to a trace store file as the store uses it (WAL, synchronous=NORMAL, ``mezzo_attr_is``)."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.create_function("mezzo_attr_is", 3, _attribute_is, deterministic=True)
    conn.create_function("mezzo_has_key", 3, _has_key, deterministic=True)
    # a new file only (an existing one keeps its size): rows of ~1 KiB fill 16 KiB pages with a third
    # less CPU per insert than 4 KiB ones
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: index pages stay in memory while spans pour in
    return conn


_Write = tuple[list[tuple[Any, ...]], set[tuple[str, str, int]], dict[tuple[str, str], int],
               Callable[[BaseException | None], None]]
"""What a request hands the writer: its rows, operations not seen before, (service, peer) pairs with their
latest start, and how to answer it."""


class Busy(Exception):
    """The writer is behind: the client should retry later."""


class StoreFailed(Exception):
    """The commit failed (disk full, I/O error, database gone): nothing of the write is stored."""


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
    keys: list[str] = field(default_factory=list)  # each an attribute key or event name a span has


class TraceStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self.pending = 0
        self._lock = threading.Lock()
        self._known_ops: set[tuple[str, str, int]] = set()
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mezzo-traces-read")
        self._local = threading.local()
        self.written = 0
        self._committed = threading.Event()  # wakes the checkpointer
        self._checkpointer: threading.Thread | None = None
        self._closing = False

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        conn.executescript(SCHEMA)
        self._known_ops = {tuple(r) for r in conn.execute("SELECT service, name, kind FROM operations")}  # type: ignore[misc]
        # Checkpoints (copying the WAL into the database, with its fsyncs) run in their own thread, so a
        # commit only appends to the WAL; the writer checkpoints itself only past WAL_BACKSTOP pages.
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP}")
        self._writer = threading.Thread(target=self._write_loop, args=(conn,), name="mezzo-traces-write", daemon=True)
        self._writer.start()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="mezzo-traces-checkpoint",
                                              daemon=True)
        self._checkpointer.start()

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join)
        if self._checkpointer is not None:
            self._closing = True
            self._committed.set()
            await asyncio.to_thread(self._checkpointer.join)
        self._readers.shutdown(wait=True)

    # writing --------------------------------------------------------------------------------

    async def write(self, spans: list[Span]) -> None:
        """Store the spans; returns once they are committed. Raises Busy when the writer is behind."""
        if not spans:
            return
        rows = encode_rows(spans)  # before the reservation below: an error here must not hold it
        peers = remote_pairs(spans)
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
        self._queue.put((rows, ops, peers, finished))
        await done

    def _write_loop(self, conn: sqlite3.Connection) -> None:
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
            spans = [row for rows, _, _, _ in batch for row in rows]
            ops = set().union(*(new for _, new, _, _ in batch))
            peers: dict[tuple[str, str], int] = {}
            for _, _, more, _ in batch:
                merge_pairs(peers, more)
            remotes = pair_rows(peers)
            error: BaseException | None = None
            try:
                conn.execute("BEGIN")
                insert_rows(conn, spans)
                if ops:
                    conn.executemany("INSERT OR IGNORE INTO operations VALUES (?, ?, ?)", list(ops))
                if remotes:
                    conn.executemany(UPSERT_REMOTE, remotes)
                conn.execute("COMMIT")
                self._known_ops = self._known_ops | ops  # a new set: write() reads it from another thread
                self.written += len(spans)
                self._committed.set()
            except Exception as exc:  # whatever it is, this thread must go on (writers wait on it)
                error = StoreFailed(f"the trace store could not commit: {type(exc).__name__}: {exc}")
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            with self._lock:
                self.pending -= len(spans)
            for *_, finished in batch:
                finished(error)

    def _checkpoint_loop(self) -> None:
        """PASSIVE checkpoints after commits: they never block the writer or readers."""
        conn = connect(self.path)
        try:
            while True:
                self._committed.wait(CHECKPOINT_EVERY)
                self._committed.clear()
                if self._closing:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    log.warning("trace store checkpoint failed; the writer's own checkpoints take over",
                                exc_info=True)
        finally:
            conn.close()

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

    async def remote_services(self, service: str) -> list[str]:
        """The peer.service values (Zipkin's remoteEndpoint.serviceName) of the service's spans, as sent."""
        return await self._read(lambda c: [r[0] for r in c.execute(  # type: ignore[no-any-return]
            "SELECT remote FROM remote_services WHERE service = ? ORDER BY remote", (service,))])

    async def find(self, q: Query) -> list[str]:
        """Trace ids matching the query, newest first (a trace matches when one of its spans does).

        Matching spans are read newest first along the (service, start) or (start) index and the scan
        stops at ``limit`` distinct traces: the first time a trace shows up is its newest matching span,
        so the order is that of MAX(start) per trace, without reading the whole time window."""
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
            where.append("(mezzo_attr_is(attributes, ?, ?) OR CAST(json_extract(resource, ?) AS TEXT) = ?)")
            args += [key, value, path, value]
        for key in q.keys:
            if key == "error":  # Zipkin's error tag is Mezzo's error status
                where.append("status = ?")
                args.append(STATUS_ERROR)
            else:
                where.append("mezzo_has_key(attributes, events, ?)")
                args.append(key)
        sql = ("SELECT trace_id FROM spans" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY start_us DESC")

        def run(c: sqlite3.Connection) -> list[str]:
            found: dict[str, None] = {}
            cursor = c.execute(sql, args)
            try:
                for (trace_id,) in cursor:
                    found[trace_id] = None
                    if len(found) >= q.limit:
                        break
            finally:
                cursor.close()  # ends the read: an open statement would hold back WAL checkpoints
            return list(found)

        return await self._read(run)  # type: ignore[no-any-return]

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

    async def enforce_retention(self, max_age_s: float, max_spans: int | None, max_bytes: int | None = None) -> int:
        """Delete spans older than the age, then the oldest beyond ``max_spans``, then the oldest while the
        pages in use exceed ``max_bytes``; returns how many went. Freed pages are reused by later spans
        (the file keeps its largest size; what it holds stays under the cap)."""
        cutoff = int((time.time() - max_age_s) * 1_000_000)

        def delete_before(c: sqlite3.Connection, edge: int | None) -> int:
            """Spans starting before ``edge`` (None: all) and the remote services only they called, in one
            transaction: a commit of the writer in between would lose its remote services."""
            where, args = ("", ()) if edge is None else (" WHERE start_us < ?", (edge,))
            c.execute("BEGIN IMMEDIATE")
            try:
                gone = c.execute("DELETE FROM spans" + where, args).rowcount
                c.execute("DELETE FROM remote_services" + where.replace("start_us", "last_us"), args)
                c.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    if c.in_transaction:
                        c.execute("ROLLBACK")
                raise
            return gone  # type: ignore[no-any-return]

        def drop_oldest(c: sqlite3.Connection, count: int, keep: int) -> int:
            if keep <= 0:
                return delete_before(c, None)
            edge = c.execute("SELECT start_us FROM spans ORDER BY start_us LIMIT 1 OFFSET ?",
                             (count - keep,)).fetchone()
            return delete_before(c, edge[0]) if edge else 0

        def run(c: sqlite3.Connection) -> int:
            gone = delete_before(c, cutoff)
            if max_spans is not None or max_bytes is not None:
                count = c.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
                if max_spans is not None and count > max_spans:
                    gone += drop_oldest(c, count, max_spans)
                    count = min(count, max_spans)
                if max_bytes is not None and count:
                    pages, free, size = (c.execute(f"PRAGMA {name}").fetchone()[0]
                                         for name in ("page_count", "freelist_count", "page_size"))
                    used = (pages - free) * size
                    if used > max_bytes:  # spans are about the same size: keep the share that fits, less 5%
                        gone += drop_oldest(c, count, int(count * max_bytes / used * 0.95))
            return int(gone)

        return await self._read(run)  # type: ignore[no-any-return]
