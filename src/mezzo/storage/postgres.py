"""The shared KV engine on PostgreSQL (asyncpg): writers serialise on one row and commit in groups, NOTIFY wakes
watchers."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from mezzo.storage.groupcommit import GroupCommit, Outcomes, Waiting, flatten
from mezzo.storage.kv import (
    CompactedError,
    Compare,
    ConflictError,
    Event,
    EventType,
    KeyValue,
    Op,
    RangeResult,
    StoreError,
    TxnResult,
    prefix_end,
)
from mezzo.storage.postgres_plain import MIGRATION as PLAIN_MIGRATION
from mezzo.storage.postgres_plain import PostgresPlain
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
    (
        2,
        # One write transaction in one round trip: writers serialise on the kv_meta row, so the lock
        # must not wait for the client between statements. A NULL value deletes its key. Returns the
        # previous rows (rev NULL), then one row with the new revision, or with the first failed compare.
        """
        CREATE FUNCTION kv_txn(op_keys text[], op_values bytea[], cmp_keys text[], cmp_revs bigint[],
                               channel text)
        RETURNS TABLE (rev bigint, conflict text, actual bigint, key text, value bytea, create_rev bigint,
                       mod_rev bigint, version bigint)
        LANGUAGE plpgsql AS $$
        #variable_conflict use_column
        DECLARE
            cur bigint; next_rev bigint; found_rev bigint; old_value bytea; seq int := 0; i int;
        BEGIN
            SELECT m.revision INTO cur FROM kv_meta m WHERE m.id = 1 FOR UPDATE;
            FOR i IN 1 .. coalesce(array_length(cmp_keys, 1), 0) LOOP
                found_rev := coalesce((SELECT k.mod_rev FROM kv k WHERE k.key = cmp_keys[i]), 0);
                IF found_rev <> cmp_revs[i] THEN
                    RETURN QUERY SELECT cur, cmp_keys[i], found_rev, NULL::text, NULL::bytea, NULL::bigint,
                                        NULL::bigint, NULL::bigint;
                    RETURN;
                END IF;
            END LOOP;
            RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::bigint, k.key, k.value, k.create_rev, k.mod_rev,
                                k.version FROM kv k WHERE k.key = ANY(op_keys);
            next_rev := cur + 1;
            FOR i IN 1 .. coalesce(array_length(op_keys, 1), 0) LOOP
                old_value := (SELECT k.value FROM kv k WHERE k.key = op_keys[i]);
                IF op_values[i] IS NULL THEN
                    IF old_value IS NOT NULL THEN
                        DELETE FROM kv k WHERE k.key = op_keys[i];
                        INSERT INTO kv_events VALUES (next_rev, seq, op_keys[i], 'DELETE', NULL, old_value);
                        seq := seq + 1;
                    END IF;
                ELSE
                    INSERT INTO kv AS k (key, value, create_rev, mod_rev, version)
                        VALUES (op_keys[i], op_values[i], next_rev, next_rev, 1)
                        ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, mod_rev = EXCLUDED.mod_rev,
                                                        version = k.version + 1;
                    INSERT INTO kv_events VALUES (next_rev, seq, op_keys[i], 'PUT', op_values[i], old_value);
                    seq := seq + 1;
                END IF;
            END LOOP;
            IF seq = 0 THEN
                RETURN QUERY SELECT cur, NULL::text, NULL::bigint, NULL::text, NULL::bytea, NULL::bigint,
                                    NULL::bigint, NULL::bigint;
                RETURN;
            END IF;
            UPDATE kv_meta SET revision = next_rev WHERE id = 1;
            PERFORM pg_notify(channel, next_rev::text);
            RETURN QUERY SELECT next_rev, NULL::text, NULL::bigint, NULL::text, NULL::bytea, NULL::bigint,
                                NULL::bigint, NULL::bigint;
        END
        $$;
        """,
    ),
    (
        3,
        # Group commit: the transactions a node has waiting go in one call, one commit, one NOTIFY.
        # Each is applied in turn with a revision of its own (a failed compare skips only its own
        # transaction); ``op_counts``/``cmp_counts`` say how many of the flat op and compare arrays
        # belong to each. Rows are tagged with the transaction's index (1-based): its previous rows
        # (rev NULL), then its result row: the new revision and the one before it (equal when nothing
        # changed), or the current revision and the failed compare.
        """
        CREATE FUNCTION kv_txn_batch(op_counts int[], op_keys text[], op_values bytea[], cmp_counts int[],
                                     cmp_keys text[], cmp_revs bigint[], channel text)
        RETURNS TABLE (txn int, rev bigint, conflict text, actual bigint, key text, value bytea,
                       create_rev bigint, mod_rev bigint, version bigint)
        LANGUAGE plpgsql AS $$
        #variable_conflict use_column
        DECLARE
            start_rev bigint; cur bigint; found_rev bigint; old_value bytea; seq int; t int; i int;
            op_at int := 0; cmp_at int := 0; failed text; failed_rev bigint; changed text[] := '{}';
            note text;
        BEGIN
            SELECT m.revision INTO cur FROM kv_meta m WHERE m.id = 1 FOR UPDATE;
            start_rev := cur;
            FOR t IN 1 .. coalesce(array_length(op_counts, 1), 0) LOOP
                failed := NULL;
                FOR i IN cmp_at + 1 .. cmp_at + cmp_counts[t] LOOP
                    found_rev := coalesce((SELECT k.mod_rev FROM kv k WHERE k.key = cmp_keys[i]), 0);
                    IF found_rev <> cmp_revs[i] THEN
                        failed := cmp_keys[i]; failed_rev := found_rev;
                        EXIT;
                    END IF;
                END LOOP;
                cmp_at := cmp_at + cmp_counts[t];
                IF failed IS NOT NULL THEN
                    RETURN QUERY SELECT t, cur, failed, failed_rev, NULL::text, NULL::bytea, NULL::bigint,
                                        NULL::bigint, NULL::bigint;
                    op_at := op_at + op_counts[t];
                    CONTINUE;
                END IF;
                RETURN QUERY SELECT t, NULL::bigint, NULL::text, NULL::bigint, k.key, k.value, k.create_rev,
                                    k.mod_rev, k.version
                             FROM kv k WHERE k.key = ANY(op_keys[op_at + 1 : op_at + op_counts[t]]);
                seq := 0;
                FOR i IN op_at + 1 .. op_at + op_counts[t] LOOP
                    old_value := (SELECT k.value FROM kv k WHERE k.key = op_keys[i]);
                    IF op_values[i] IS NULL THEN
                        IF old_value IS NOT NULL THEN
                            DELETE FROM kv k WHERE k.key = op_keys[i];
                            INSERT INTO kv_events VALUES (cur + 1, seq, op_keys[i], 'DELETE', NULL, old_value);
                            seq := seq + 1;
                        END IF;
                    ELSE
                        INSERT INTO kv AS k (key, value, create_rev, mod_rev, version)
                            VALUES (op_keys[i], op_values[i], cur + 1, cur + 1, 1)
                            ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, mod_rev = EXCLUDED.mod_rev,
                                                            version = k.version + 1;
                        INSERT INTO kv_events VALUES (cur + 1, seq, op_keys[i], 'PUT', op_values[i], old_value);
                        seq := seq + 1;
                    END IF;
                END LOOP;
                IF seq > 0 THEN
                    cur := cur + 1;
                    changed := changed || op_keys[op_at + 1 : op_at + op_counts[t]];
                END IF;
                op_at := op_at + op_counts[t];
                RETURN QUERY SELECT t, cur, NULL::text, cur - least(seq, 1)::bigint, NULL::text, NULL::bytea,
                                    NULL::bigint, NULL::bigint, NULL::bigint;
            END LOOP;
            IF cur > start_rev THEN
                UPDATE kv_meta SET revision = cur WHERE id = 1;
                -- the keys let each node wake only the watches they concern (NOTIFY holds < 8000 bytes)
                note := json_build_object('rev', cur, 'since', start_rev, 'keys', changed)::text;
                IF octet_length(note) > 7000 THEN
                    note := cur::text;
                END IF;
                PERFORM pg_notify(channel, note);
            END IF;
        END
        $$;
        """,
    ),
    (4, PLAIN_MIGRATION),
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


async def _keep_session(conn: Any) -> None:
    """A connection goes back to the pool as it is: this store never changes session state (no SET,
    LISTEN or session advisory lock on pool connections; transactions always end), so asyncpg's
    default reset would be one more round trip per query for nothing. An open transaction is still
    rolled back by asyncpg itself before this is called."""


def _notified(signal: ChangeSignal, payload: str) -> None:
    """A commit's notification: ``{"rev", "since", "keys"}`` from a group commit (the keys written in
    the revisions after ``since``), or a bare revision (a group too big to list, or an older node)."""
    try:
        if payload.startswith("{"):
            note = orjson.loads(payload)
            signal.advance(int(note["rev"]), note["keys"], int(note["since"]))
        else:
            signal.advance(int(payload))
    except (ValueError, KeyError, TypeError):  # not ours: someone else NOTIFYing on the channel
        signal.notify()


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
    """KVStore on PostgreSQL. Every writer locks the single ``kv_meta`` row, so commit order is revision order.

    Watches wake on NOTIFY; the LISTEN connection also reads the revision every ``poll_interval``
    seconds, which notices a silently dropped link and covers notifications lost with it. That one
    query per store is the only polling: a watch queries only after a change.
    """

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
        self._group = GroupCommit(lambda batch: self._apply(batch))  # looked up per call: tests wrap _apply
        self._plain: PostgresPlain | None = None

    async def open(self) -> None:
        import asyncpg

        # READ COMMITTED whatever the database's default: plain_txn_batch reads its compares after its
        # key locks are granted, and a migration reads schema_migrations after the migration lock;
        # both need a snapshot per statement, not one taken before the wait
        settings = {"search_path": self.schema, "application_name": "mezzo",
                    "default_transaction_isolation": "read committed"}
        first = await asyncpg.connect(self.dsn)
        try:
            # IF NOT EXISTS still races between nodes starting together: the loser sees a duplicate.
            with contextlib.suppress(asyncpg.UniqueViolationError, asyncpg.DuplicateSchemaError):
                await first.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        finally:
            await first.close()
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=self.pool_size, server_settings=settings, reset=_keep_session
        )
        await self._migrate()
        if self._plain is not None:
            self._plain.pool = self._pool
        revision = (await self.revision())[0]
        if self._signal is None:
            self._signal = ChangeSignal(revision)
        else:  # reopened: watches parked on the old handle carry on
            self._signal.advance(revision)
        self._listen_task = asyncio.create_task(self._listen(settings), name="mezzo-pg-listen")

    async def close(self) -> None:
        await self._group.drain()  # writes already queued are committed first
        if self._plain is not None:  # kept: a reopened store gives it the new pool (a TxLog holds it)
            await self._plain.close()
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
            self._listen_task = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def plain(self) -> PostgresPlain:
        """The store's plain rows (no history, no watch: see postgres_plain), on its pool; open first."""
        if self._pool is None:
            raise StoreError("the store is not open")
        if self._plain is None:
            self._plain = PostgresPlain(self._pool)
        return self._plain

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

    async def _listen(self, settings: dict[str, str]) -> None:
        """Hold a LISTEN connection and check the revision on it; reconnect with backoff."""
        import asyncpg

        assert self._signal is not None
        signal = self._signal
        delay = 0.5
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn, server_settings=settings)
                await conn.add_listener(self.channel, lambda *args: _notified(signal, args[-1]))
                delay = 0.5
                while True:  # the first check covers changes made while disconnected
                    signal.advance(await conn.fetchval("SELECT revision FROM kv_meta", timeout=5))
                    await asyncio.sleep(self.poll_interval)
            except asyncio.CancelledError:
                raise
            except Exception:
                signal.notify()  # blind for a while: let the watches look for themselves
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
        return watch_store(self, self._signal, prefix, start)

    # writes --------------------------------------------------------------------

    async def txn(self, ops: Sequence[Op], compares: Sequence[Compare] = ()) -> TxnResult:
        """Queue the transaction for the next group commit and wait for its outcome.

        Writers serialise on the ``kv_meta`` row, so one commit at a time is all a node can have in
        flight anyway; what arrives meanwhile goes in the next call together (one round trip, one
        commit, one NOTIFY), each transaction with its own revision and compares.
        """
        check_ops(ops, compares)
        return await self._group.submit(ops, compares)

    async def plain_txn_with(self, ops: Sequence[Op], compares: Sequence[Compare], also: Sequence[Op]) -> TxnResult:
        """A write to the plain rows (``ops`` if the compares hold) and a write to the KV store
        (``also``, e.g. the audit record of that change) in one PostgreSQL transaction: both or neither.
        Not grouped with other writes: for rare writes such as an operator's."""
        check_ops(ops, compares)
        check_ops(also, ())
        plain = self.plain()
        loop = asyncio.get_running_loop()
        mine, record = Waiting(ops, compares, loop.create_future()), Waiting(also, (), loop.create_future())
        async with self._pool.acquire() as conn, conn.transaction():
            [outcome] = plain.outcomes([mine], await conn.fetch(PostgresPlain.BATCH, *flatten([mine])))
            if isinstance(outcome, BaseException):
                raise outcome  # and the transaction rolls back (nothing was written anyway)
            rows = await conn.fetch(self.BATCH, *flatten([record]), self.channel)
        self._outcomes([record], rows)
        return outcome

    BATCH = "SELECT * FROM kv_txn_batch($1::int[], $2::text[], $3::bytea[], $4::int[], $5::text[], $6::bigint[], $7)"

    async def _apply(self, batch: list[Waiting]) -> Outcomes:
        return self._outcomes(batch, await self._pool.fetch(self.BATCH, *flatten(batch), self.channel))

    def _outcomes(self, batch: list[Waiting], rows: list[Any]) -> Outcomes:
        """What each write of ``batch`` came to, from kv_txn_batch's rows; wakes this node's watches."""
        prev: list[dict[str, KeyValue]] = [{} for _ in batch]
        outcomes: list[TxnResult | BaseException] = []
        since: int | None = None
        newest, changed = 0, set()
        for row in rows:
            index = row["txn"] - 1
            if row["rev"] is None:
                prev[index][row["key"]] = _kv(row)
            elif row["conflict"] is not None:
                wanted = next(c.mod_revision for c in batch[index].compares if c.key == row["conflict"])
                outcomes.append(ConflictError(row["conflict"], wanted, row["actual"]))
            else:
                outcomes.append(TxnResult(row["rev"], prev[index]))
                if row["rev"] != row["actual"]:
                    since = row["actual"] if since is None else since
                    newest = row["rev"]
                    changed.update(op.key for op in batch[index].ops)
        if self._signal is not None and newest:
            # this node's watches need not wait for the NOTIFY round trip, and only those whose prefix
            # a written key starts with wake (the revisions since..newest are all this call's)
            self._signal.advance(newest, changed, since)
        return outcomes

    async def compact(self, revision: int) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            current, compacted = await conn.fetchrow(
                "SELECT revision, compact_revision FROM kv_meta WHERE id = 1 FOR UPDATE"
            )
            target = min(revision, current)
            if target > compacted:
                await conn.execute("DELETE FROM kv_events WHERE rev <= $1", target)
                await conn.execute("UPDATE kv_meta SET compact_revision = $1 WHERE id = 1", target)
