"""The embedded KV engine: one SQLite file in WAL mode, one writer thread with group commit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

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
    StoreError,
    TxnResult,
    prefix_end,
)
from mezzo.storage.txn import check_key, check_ops, check_range
from mezzo.storage.watch import ChangeSignal, watch_store, whole_revisions

log = structlog.get_logger("mezzo.storage")

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE kv (
            key TEXT PRIMARY KEY, value BLOB NOT NULL,
            create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, version INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE kv_events (
            rev INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL, type TEXT NOT NULL,
            value BLOB, prev_value BLOB, PRIMARY KEY (rev, seq)
        ) WITHOUT ROWID;
        CREATE TABLE kv_meta (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            revision INTEGER NOT NULL, compact_revision INTEGER NOT NULL
        );
        INSERT INTO kv_meta VALUES (1, 0, 0);
        """,
    ),
]

_SYNC_MODES = {"off", "normal", "full", "extra"}
_MAX_BATCH = 512


def sqlite_path(url: str) -> Path:
    """``sqlite:///rel/path.db`` → ``rel/path.db``; ``sqlite:////abs/path.db`` → ``/abs/path.db``."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or not parts.path.startswith("/") or len(parts.path) < 2:
        raise ValueError(f"invalid SQLite URL {url!r}: expected sqlite:///PATH")
    return Path(parts.path[1:])


@dataclass(slots=True)
class _Request:
    ops: Sequence[Op]
    compares: Sequence[Compare]
    future: asyncio.Future[TxnResult]


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _kv(row: Any) -> KeyValue:
    return KeyValue(row[0], bytes(row[1]), row[2], row[3], row[4])


class SQLiteStore:
    """KVStore on SQLite. Writes go through one thread that commits queued transactions together.

    Watches wake on this store's own commits at once; commits by other processes sharing the file
    are noticed by one revision check every ``poll_interval`` seconds, made on the event loop with
    a connection of its own (a few microseconds: it reads one cached page; a thread hand-off per
    check, or a query per watch, would cost the loop far more), however many watches are open.
    """

    def __init__(self, url: str, *, poll_interval: float = 0.25) -> None:
        self.url = url
        self.path = sqlite_path(url)
        query = parse_qs(urlsplit(url).query)
        self.synchronous = query.get("synchronous", ["full"])[0].lower()
        if self.synchronous not in _SYNC_MODES:
            raise ValueError(f"synchronous must be one of {sorted(_SYNC_MODES)}")
        self.poll_interval = poll_interval
        self._signal: ChangeSignal | None = None
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probe: sqlite3.Connection | None = None
        self._detector: asyncio.Task[None] | None = None
        self._closed = True

    # lifecycle -----------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path, self.synchronous)
        try:
            await asyncio.to_thread(self._migrate, conn)
            # busy_timeout 0: the check runs on the loop, which must never wait for a lock
            self._probe = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
            revision = self._latest_revision()
        except BaseException:
            conn.close()
            if self._probe is not None:
                self._probe.close()
                self._probe = None
            raise
        if self._signal is None:
            self._signal = ChangeSignal(revision)
        else:  # reopened: watches parked on the old handle carry on
            self._signal.advance(revision)
        self._detector = asyncio.create_task(self._detect_changes(), name="mezzo-sqlite-changes")
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mezzo-sqlite-read")
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="mezzo-sqlite-write", daemon=True
        )
        self._writer.start()
        self._closed = False

    async def close(self) -> None:
        self._closed = True  # txn() refuses from here on; queued requests are answered below
        if self._detector is not None:
            self._detector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._detector
            self._detector = None
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            if request is not None and not request.future.done():
                request.future.set_exception(StoreError("store closed before the transaction ran"))
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
        for conn in self._reader_conns:
            conn.close()
        self._reader_conns.clear()
        self._local = threading.local()

    async def ready(self) -> bool:
        try:
            await self._read(lambda c: c.execute("SELECT 1").fetchone())
        except (sqlite3.Error, RuntimeError):
            return False
        detecting = self._detector is not None and not self._detector.done()
        return detecting and self._writer is not None and self._writer.is_alive()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, sql in MIGRATIONS:
                if version in done:
                    continue
                for statement in filter(str.strip, sql.split(";")):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # reads ---------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, self.synchronous)
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    async def _read(self, fn: Any) -> Any:
        if self._readers is None:
            raise RuntimeError("store is not open")

        def run() -> Any:
            conn = self._reader()
            conn.execute("BEGIN")  # one snapshot for the whole read
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    async def get(self, key: str) -> KeyValue | None:
        check_key(key)
        row = await self._read(
            lambda c: c.execute(
                "SELECT key, value, create_rev, mod_rev, version FROM kv WHERE key = ?", (key,)
            ).fetchone()
        )
        return _kv(row) if row else None

    async def range(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> RangeResult:
        check_range(prefix, limit)
        low = prefix if start_after is None or start_after < prefix else start_after
        op = ">" if start_after is not None and low == start_after else ">="
        end = prefix_end(prefix)

        def run(c: sqlite3.Connection) -> RangeResult:
            revision = c.execute("SELECT revision FROM kv_meta").fetchone()[0]
            sql = (
                f"SELECT key, value, create_rev, mod_rev, version FROM kv"
                f" WHERE key {op} ? AND (? IS NULL OR key < ?) ORDER BY key"
            )
            args: tuple[Any, ...] = (low, end, end)
            if limit is not None:
                sql += " LIMIT ?"
                args += (limit + 1,)
            rows = c.execute(sql, args).fetchall()
            more = limit is not None and len(rows) > limit
            return RangeResult([_kv(r) for r in rows[:limit]], revision, more)

        return await self._read(run)

    async def revision(self) -> tuple[int, int]:
        row = await self._read(
            lambda c: c.execute("SELECT revision, compact_revision FROM kv_meta").fetchone()
        )
        return row[0], row[1]

    async def events(self, start: int, prefix: str = "", limit: int = 1000) -> list[Event]:
        check_range(prefix, limit)
        start = max(start, 1)
        end = prefix_end(prefix)
        select = (
            "SELECT rev, type, key, value, prev_value FROM kv_events"
            " WHERE rev >= ? AND rev <= ? AND key >= ? AND (? IS NULL OR key < ?) ORDER BY rev, seq"
        )

        def run(c: sqlite3.Connection) -> list[Event]:
            compact = c.execute("SELECT compact_revision FROM kv_meta").fetchone()[0]
            if start <= compact:
                raise CompactedError(start, compact)
            rows = c.execute(select + " LIMIT ?", (min(start, 2**62), 2**62, prefix, end, end, limit)).fetchall()
            events = [_event(r) for r in rows]
            page = whole_revisions(events, limit)
            if events and not page:  # one revision bigger than a page: return it whole
                rev = events[0].revision
                page = [_event(r) for r in c.execute(select, (rev, rev, prefix, end, end))]
            return page

        return await self._read(run)

    def watch(self, prefix: str = "", start: int | None = None) -> AsyncIterator[Event]:
        return watch_store(self, self._signal, prefix, start)

    def _latest_revision(self) -> int:
        assert self._probe is not None
        return int(self._probe.execute("SELECT revision FROM kv_meta").fetchone()[0])

    async def _detect_changes(self) -> None:
        """Wake the watches when another process has committed to the file."""
        assert self._signal is not None
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                self._signal.advance(self._latest_revision())
            except Exception as exc:  # busy (recovery, a checkpoint elsewhere): let the watches look
                log.debug("sqlite change check failed", error=str(exc))
                self._signal.notify()

    # writes --------------------------------------------------------------------

    async def txn(self, ops: Sequence[Op], compares: Sequence[Compare] = ()) -> TxnResult:
        check_ops(ops, compares)
        if self._closed or self._writer is None or self._loop is None:
            raise StoreError("store is not open")
        future: asyncio.Future[TxnResult] = self._loop.create_future()
        self._queue.put(_Request(tuple(ops), tuple(compares), future))
        return await future

    async def compact(self, revision: int) -> None:
        def run(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            try:
                current, compacted = c.execute(
                    "SELECT revision, compact_revision FROM kv_meta"
                ).fetchone()
                target = min(revision, current)
                if target > compacted:
                    c.execute("DELETE FROM kv_events WHERE rev <= ?", (target,))
                    c.execute("UPDATE kv_meta SET compact_revision = ?", (target,))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        if self._readers is None:
            raise RuntimeError("store is not open")
        await asyncio.get_running_loop().run_in_executor(
            self._readers, lambda: run(self._reader())
        )

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < _MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                self._commit(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[_Request]) -> None:
        outcomes: list[tuple[_Request, TxnResult | BaseException]] = []
        base = -1
        try:
            conn.execute("BEGIN IMMEDIATE")
            base = conn.execute("SELECT revision FROM kv_meta").fetchone()[0]
            for request in batch:
                conn.execute("SAVEPOINT txn")
                try:
                    outcomes.append((request, _apply(conn, request.ops, request.compares)))
                except Exception as exc:  # one bad request must not take the writer down
                    conn.execute("ROLLBACK TO txn")
                    outcomes.append((request, exc))
                conn.execute("RELEASE txn")
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            outcomes = [(r, StoreError(f"commit failed: {exc}")) for r in batch]
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._resolve, outcomes, base)
        except RuntimeError:  # the loop is gone: nobody is waiting any more
            pass

    def _resolve(self, outcomes: list[tuple[_Request, TxnResult | BaseException]], base: int) -> None:
        for request, outcome in outcomes:
            if request.future.done():
                continue
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)
        done = [(r, o) for r, o in outcomes if isinstance(o, TxnResult)]
        if self._signal is not None and done:  # the batch made revisions base+1.. and nothing else did
            keys = {op.key for request, _ in done for op in request.ops}
            self._signal.advance(max(o.revision for _, o in done), keys, since=base)


def _event(row: Any) -> Event:
    return Event(
        revision=row[0],
        type=EventType(row[1]),
        key=row[2],
        value=bytes(row[3]) if row[3] is not None else None,
        prev_value=bytes(row[4]) if row[4] is not None else None,
    )


def _apply(conn: sqlite3.Connection, ops: Sequence[Op], compares: Sequence[Compare]) -> TxnResult:
    for compare in compares:
        row = conn.execute("SELECT mod_rev FROM kv WHERE key = ?", (compare.key,)).fetchone()
        actual = row[0] if row else 0
        if actual != compare.mod_revision:
            raise ConflictError(compare.key, compare.mod_revision, actual)
    current = conn.execute("SELECT revision FROM kv_meta").fetchone()[0]
    rev = current + 1
    prev: dict[str, KeyValue] = {}
    seq = 0
    for op in ops:
        row = conn.execute(
            "SELECT key, value, create_rev, mod_rev, version FROM kv WHERE key = ?", (op.key,)
        ).fetchone()
        old = _kv(row) if row else None
        if old is not None:
            prev[op.key] = old
        if isinstance(op, Put):
            if old is None:
                conn.execute(
                    "INSERT INTO kv VALUES (?, ?, ?, ?, 1)", (op.key, op.value, rev, rev)
                )
            else:
                conn.execute(
                    "UPDATE kv SET value = ?, mod_rev = ?, version = version + 1 WHERE key = ?",
                    (op.value, rev, op.key),
                )
            kind, value = EventType.PUT.value, op.value
        elif isinstance(op, Delete):
            if old is None:
                continue
            conn.execute("DELETE FROM kv WHERE key = ?", (op.key,))
            kind, value = EventType.DELETE.value, None
        conn.execute(
            "INSERT INTO kv_events VALUES (?, ?, ?, ?, ?, ?)",
            (rev, seq, op.key, kind, value, old.value if old else None),
        )
        seq += 1
    if seq == 0:
        return TxnResult(current, prev)
    conn.execute("UPDATE kv_meta SET revision = ?", (rev,))
    return TxnResult(rev, prev)


def default_sqlite_url(data_dir: str | os.PathLike[str]) -> str:
    path = Path(data_dir).absolute() / "mezzo.db"
    return f"sqlite:///{path}"
