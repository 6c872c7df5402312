"""Plain rows on PostgreSQL: keys, values and revisions with the store's compare-and-set, without
history, watch or the store-wide revision.

For state that only its writers read back, written often and never watched: the transaction log.
A write to the KV store also stores an event with the old and new values for watchers, returns the
previous rows and takes the one row every writer of the database serialises on; here a write is an
upsert. Compares keep their meaning (``mod_revision`` of the key, 0: absent) because every key a
call touches is locked, in one order, before anything is read: a compare and the write after it
are atomic against every other writer, on any node, and two calls never wait for each other in a
circle. Revisions come from a sequence: they grow, but are not gap-free and do not order commits.

The rows live in the store's schema and use its pool; writes go in groups like the store's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mezzo.storage.groupcommit import GroupCommit, Outcomes, Waiting, flatten
from mezzo.storage.kv import (
    Compare,
    ConflictError,
    KeyValue,
    Op,
    RangeResult,
    TxnResult,
    prefix_end,
)
from mezzo.storage.txn import check_key, check_ops, check_range

LOCK_KEYS = 512  # keys a call locks one by one (beyond: the whole table); a group of plain rows stays under it

# Migration 4 of the store's schema. The transaction log (``/tx/``) moves here from ``kv`` with the
# revisions it had, and the sequence starts past every revision the store has given out, so a
# compare a node read before the move still holds or fails as it would have.
MIGRATION = """
-- an older node's write in flight finishes first, and none starts until the move is committed
SELECT 1 FROM kv_meta WHERE id = 1 FOR UPDATE;
CREATE TABLE plain_kv (key TEXT COLLATE "C" PRIMARY KEY, value BYTEA NOT NULL, mod_rev BIGINT NOT NULL);
CREATE SEQUENCE plain_rev;
SELECT setval('plain_rev', greatest((SELECT revision FROM kv_meta WHERE id = 1), 1));
INSERT INTO plain_kv SELECT key, value, mod_rev FROM kv WHERE key >= '/tx/' AND key < '/tx0';
DELETE FROM kv WHERE key >= '/tx/' AND key < '/tx0';

-- Group commit, as kv_txn_batch: the transactions are applied in turn, each with its own compares
-- and revision (a failed compare skips only its own). One row per transaction: its index, and its
-- new revision, or the failed compare's key and the revision found.
CREATE FUNCTION plain_txn_batch(op_counts int[], op_keys text[], op_values bytea[], cmp_counts int[],
                                cmp_keys text[], cmp_revs bigint[])
RETURNS TABLE (txn int, rev bigint, conflict text, actual bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    t int; i int; op_at int := 0; cmp_at int := 0; found_rev bigint; failed text; failed_rev bigint;
    next_rev bigint; keys text[];
BEGIN
    -- every key of the call, locked first and in one order (released at commit); the two-key form
    -- with classes of its own ('mztx', 'mztx'+1) keeps these locks apart from other users of
    -- advisory locks. The lock table is small (shared by the whole server), so a call with more
    -- than LOCK_KEYS keys locks the schema's table instead, alone: others hold it shared.
    keys := ARRAY(SELECT DISTINCT k FROM unnest(op_keys || cmp_keys) AS k);
    IF cardinality(keys) > LOCK_KEYS THEN
        PERFORM pg_advisory_xact_lock(1836741753, hashtext(current_schema()));
    ELSE
        PERFORM pg_advisory_xact_lock_shared(1836741753, hashtext(current_schema()));
        PERFORM pg_advisory_xact_lock(1836741752, s.h)
           FROM (SELECT DISTINCT hashtext(current_schema() || ' ' || k) AS h FROM unnest(keys) AS k ORDER BY 1) s;
    END IF;
    FOR t IN 1 .. coalesce(array_length(op_counts, 1), 0) LOOP
        failed := NULL;
        FOR i IN cmp_at + 1 .. cmp_at + cmp_counts[t] LOOP
            found_rev := coalesce((SELECT p.mod_rev FROM plain_kv p WHERE p.key = cmp_keys[i]), 0);
            IF found_rev <> cmp_revs[i] THEN
                failed := cmp_keys[i]; failed_rev := found_rev;
                EXIT;
            END IF;
        END LOOP;
        cmp_at := cmp_at + cmp_counts[t];
        IF failed IS NOT NULL THEN
            op_at := op_at + op_counts[t];
            RETURN QUERY SELECT t, NULL::bigint, failed, failed_rev;
            CONTINUE;
        END IF;
        next_rev := nextval('plain_rev');
        FOR i IN op_at + 1 .. op_at + op_counts[t] LOOP
            IF op_values[i] IS NULL THEN
                DELETE FROM plain_kv p WHERE p.key = op_keys[i];
            ELSE
                INSERT INTO plain_kv AS p (key, value, mod_rev) VALUES (op_keys[i], op_values[i], next_rev)
                    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, mod_rev = EXCLUDED.mod_rev;
            END IF;
        END LOOP;
        op_at := op_at + op_counts[t];
        RETURN QUERY SELECT t, next_rev, NULL::text, NULL::bigint;
    END LOOP;
END
$$;
""".replace("LOCK_KEYS", str(LOCK_KEYS))


class PostgresPlain:
    """``get``, ``range`` and ``txn`` of a KV store, over the ``plain_kv`` rows of an open PostgresStore.

    ``KeyValue.create_revision`` is not kept (it reads as the ``mod_revision``) and ``version`` is 1;
    ``TxnResult.prev`` is always empty and ``RangeResult.revision`` 0. A transaction always takes a
    revision, even one whose deletes all miss.
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool  # the store's: it closes it, and gives a reopened store's pool here
        self._group = GroupCommit(lambda batch: self._apply(batch), max_ops=LOCK_KEYS)

    async def close(self) -> None:
        """Wait for the writes already queued (the pool is the store's: it closes it)."""
        await self._group.drain()

    async def get(self, key: str) -> KeyValue | None:
        check_key(key)
        row = await self.pool.fetchrow("SELECT key, value, mod_rev FROM plain_kv WHERE key = $1", key)
        return _kv(row) if row else None

    async def range(self, prefix: str, *, start_after: str | None = None, limit: int | None = None) -> RangeResult:
        check_range(prefix, limit)
        low = prefix if start_after is None or start_after < prefix else start_after
        op = ">" if start_after is not None and low == start_after else ">="
        sql = (f"SELECT key, value, mod_rev FROM plain_kv WHERE key {op} $1 AND ($2::text IS NULL OR key < $2)"
               " ORDER BY key")
        args: list[Any] = [low, prefix_end(prefix)]
        if limit is not None:
            sql += " LIMIT $3"
            args.append(limit + 1)
        rows = await self.pool.fetch(sql, *args)
        more = limit is not None and len(rows) > limit
        return RangeResult([_kv(r) for r in rows[:limit]], 0, more)

    async def txn(self, ops: Sequence[Op], compares: Sequence[Compare] = ()) -> TxnResult:
        """Apply ``ops`` if every compare holds (else ConflictError, nothing written), in the next group."""
        check_ops(ops, compares)
        return await self._group.submit(ops, compares)

    BATCH = "SELECT * FROM plain_txn_batch($1::int[], $2::text[], $3::bytea[], $4::int[], $5::text[], $6::bigint[])"

    async def _apply(self, batch: list[Waiting]) -> Outcomes:
        return self.outcomes(batch, await self.pool.fetch(self.BATCH, *flatten(batch)))

    @staticmethod
    def outcomes(batch: list[Waiting], rows: list[Any]) -> Outcomes:
        """What each write of ``batch`` came to, from plain_txn_batch's rows."""
        outcomes: Outcomes = []
        for row in rows:
            if row["conflict"] is not None:
                index = row["txn"] - 1
                wanted = next(c.mod_revision for c in batch[index].compares if c.key == row["conflict"])
                outcomes.append(ConflictError(row["conflict"], wanted, row["actual"]))
            else:
                outcomes.append(TxnResult(row["rev"]))
        return outcomes


def _kv(row: Any) -> KeyValue:
    return KeyValue(row["key"], bytes(row["value"]), row["mod_rev"], row["mod_rev"], 1)
