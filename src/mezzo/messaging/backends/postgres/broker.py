"""The PostgreSQL broker: topics, offsets and consumer-group state in tables shared by every node.

Publishing appends rows under a per-partition counter lock; fetching claims group entries
with ``FOR UPDATE SKIP LOCKED`` so nodes compete without blocking; NOTIFY wakes waiting
fetches everywhere. The hot paths are PL/pgSQL functions in ``schema.sql`` (one round trip
each); this module adapts them to the ``Broker`` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from mezzo.messaging.backend import (
    Delivery,
    Feature,
    GroupStats,
    Position,
    Record,
    StaleReceiptError,
    TopicStats,
)
from mezzo.messaging.backends.postgres import queries as q
from mezzo.messaging.backends.postgres.database import (
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    RETRYABLE,
    BrokerUnavailable,
    broker_dsn,
    channel_for,
    create_schema,
    migrate,
    translate,
    where,
)
from mezzo.messaging.backends.postgres.receipts import make_receipt, receipt_arrays
from mezzo.messaging.backends.postgres.wakeups import Wakeups
from mezzo.messaging.model import TopicSpec
from mezzo.node.settings import Settings

T = TypeVar("T")
MAX_GROUPS = 1000  # consumer groups per topic
WINDOW = 10_000  # offsets a group may hold between its oldest unacked message and its read position
LOAD_CHUNK = 64  # least a fetch reads ahead per partition, so blocked keys do not starve others
ACQUIRE_TIMEOUT = 10.0  # waiting for a pooled connection longer than this means trouble
ATTEMPTS = 4  # a call that hits a deadlock or serialization failure is redone up to this often


class PostgresBroker:
    """Broker on PostgreSQL; any number of nodes may share one schema."""

    engine = "postgres"
    features = frozenset({Feature.PARTITIONS, Feature.KEY_ORDERING, Feature.SEEK, Feature.RETENTION})
    record_limit: int | None = None

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.dsn, self.schema = broker_dsn(url)
        self.channel = channel_for(self.schema)
        self.pool_size = pool_size
        self.max_groups = MAX_GROUPS
        self._pool: Any = None
        self._topics: set[str] = set()  # ensured by this node or found at open
        self._group_ids: dict[tuple[str, str], int] = {}  # a hint: a stale id fails and is looked up again
        self._wakeups = Wakeups(self.dsn, self.channel)

    # lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        import asyncpg

        try:
            await create_schema(self.dsn, self.schema)
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self.pool_size, timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
                server_settings={"search_path": self.schema, "application_name": "mezzo-broker"},
            )
            await migrate(self._pool, self.schema)
            rows = await self._pool.fetch(q.TOPIC_NAMES)
        except Exception as exc:
            await self.close()
            raise translate(exc, self.dsn) from exc
        self._topics = {r["name"] for r in rows}  # a restarted node serves what is already there
        await self._wakeups.start()

    async def close(self) -> None:
        await self._wakeups.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT)
            except (TimeoutError, OSError):
                pool.terminate()

    async def ready(self) -> bool:
        if self._pool is None:
            return False
        try:
            async with self._pool.acquire(timeout=2.0) as conn:
                await conn.fetchval("SELECT 1", timeout=2.0)
        except Exception:
            return False
        return True

    async def _run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``work(connection)``, redoing it after a deadlock or serialization failure."""
        if self._pool is None:
            raise BrokerUnavailable(f"PostgreSQL broker at {where(self.dsn)} is not open")
        for attempt in range(ATTEMPTS):
            try:
                async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                    return await work(conn)
            except Exception as exc:
                if getattr(exc, "sqlstate", None) in RETRYABLE and attempt < ATTEMPTS - 1:
                    await asyncio.sleep(random.uniform(0.001, 0.01) * (attempt + 1))
                    continue
                raise translate(exc, self.dsn) from exc
        raise AssertionError("unreachable")

    async def _rows(self, sql: str, *args: Any) -> list[Any]:
        return await self._run(lambda conn: conn.fetch(sql, *args))

    async def _in_transaction(self, work: Callable[[Any], Awaitable[T]]) -> T:
        async def run(conn: Any) -> T:
            async with conn.transaction():
                return await work(conn)

        return await self._run(run)

    # topics ----------------------------------------------------------------------------

    async def ensure_topic(self, topic: str, spec: TopicSpec) -> None:
        document = orjson.dumps(spec.model_dump(mode="json", by_alias=True)).decode()

        async def work(conn: Any) -> None:
            row = await conn.fetchrow(
                q.UPSERT_TOPIC, topic, spec.partitions, int(spec.dedup_window * 1000),
                int(spec.retention * 1000), spec.retention_bytes, document)
            await conn.execute(q.ADD_PARTITIONS, row["id"], row["partitions"])
            await conn.execute(q.ADD_CURSORS, row["id"])  # existing groups read new partitions from 0

        await self._in_transaction(work)
        self._topics.add(topic)

    async def delete_topic(self, topic: str) -> None:
        async def work(conn: Any) -> None:
            topic_id = await conn.fetchval(q.LOCK_TOPIC, topic)
            if topic_id is None:
                return
            await conn.execute(q.LOCK_TOPIC_PARTITIONS, topic_id)  # waits for publishes in progress
            for sql in q.DROP_TOPIC:
                await conn.execute(sql, topic_id)
            await conn.execute(q.NOTIFY, self.channel, topic)  # waiting fetches give up

        await self._in_transaction(work)
        self._topics.discard(topic)
        for known in [k for k in self._group_ids if k[0] == topic]:
            del self._group_ids[known]
        self._wakeups.wake(topic)

    def topics(self) -> list[str]:
        return sorted(self._topics)

    def has_topic(self, topic: str) -> bool:
        return topic in self._topics

    # publishing ------------------------------------------------------------------------

    async def publish(self, topic: str, records: list[Record], partitions: list[int]) -> list[Position]:
        if not records:
            return []
        if len(partitions) != len(records):
            raise ValueError("one partition per record")
        rows = await self._rows(
            q.PUBLISH, topic, [_utf8(r.id) for r in records],
            [None if r.key is None else _utf8(r.key) for r in records], partitions,
            [r.timestamp_ms for r in records], [r.payload for r in records], self.channel)
        self._wakeups.wake(topic)  # this node's fetches need not wait for the NOTIFY round trip
        rows.sort(key=lambda r: r["r_index"])
        return [Position(r["r_partition"], r["r_offset"], r["r_duplicate"]) for r in rows]

    # consuming -------------------------------------------------------------------------

    async def _group_id(self, topic: str, group: str) -> tuple[int, bool]:
        """The group's id, creating the group on first use; True when it came from the cache."""
        cached = self._group_ids.get((topic, group))
        if cached is not None:
            return cached, True
        gid = await self._run(lambda conn: conn.fetchval(q.GROUP, topic, group, self.max_groups))
        self._group_ids[(topic, group)] = gid
        return gid, False

    async def fetch(
        self, topic: str, group: str, max_messages: int, wait: float, ack_timeout: float
    ) -> list[Delivery]:
        gid, cached = await self._group_id(topic, group)
        deadline = time.monotonic() + wait
        ack_ms = max(int(ack_timeout * 1000), 1)
        while True:
            changed = self._wakeups.event(topic)  # before the query: a later change sets it
            try:
                rows = await self._rows(q.FETCH, gid, max_messages, ack_ms,
                                        max(max_messages, LOAD_CHUNK), WINDOW)
            except LookupError:
                self._group_ids.pop((topic, group), None)
                if not cached:
                    raise LookupError(f"topic {topic!r} or its group {group!r} was deleted") from None
                gid, cached = await self._group_id(topic, group)  # deleted and re-created elsewhere
                continue
            cached = False  # from here on the id is known good: its loss means a deletion
            if rows and rows[0]["r_partition"] >= 0:
                return [
                    Delivery(topic, r["r_partition"], r["r_offset"], r["r_ts"], r["r_payload"], r["r_attempt"],
                             make_receipt(r["r_partition"], r["r_offset"], r["r_attempt"], r["r_delivery"]))
                    for r in rows
                ]
            now = time.monotonic()
            if now >= deadline:
                return []
            due_ms = rows[0]["r_offset"] if rows else -1
            until = min(deadline, now + self._wakeups.poll_interval)
            if due_ms >= 0:
                until = min(until, now + due_ms / 1000)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(until - now, 0.001)):
                    await changed.wait()

    async def ack(self, topic: str, group: str, receipts: list[str]) -> None:
        wanted, columns = receipt_arrays(receipts)
        done = await self._rows(q.ACK, topic, group, *columns, self.channel) if wanted else []
        self._raise_stale(receipts, wanted, done)

    async def nack(self, topic: str, group: str, receipts: list[str], delay: float) -> None:
        wanted, columns = receipt_arrays(receipts)
        delay_ms = max(int(delay * 1000), 0)
        done = await self._rows(q.NACK, topic, group, *columns, delay_ms, self.channel) if wanted else []
        if done:
            self._wakeups.wake(topic)
        self._raise_stale(receipts, wanted, done)

    @staticmethod
    def _raise_stale(receipts: list[str], wanted: dict[tuple[int, int, int], list[str]], done: list[Any]) -> None:
        accepted = {r for row in done for r in wanted.get((row["r_partition"], row["r_offset"], row["r_delivery"]), [])}
        stale = [r for r in receipts if r not in accepted]
        if stale:
            raise StaleReceiptError(f"not in flight (acked, timed out or redelivered): {', '.join(stale[:10])}")

    async def in_flight(self, topic: str, group: str, receipts: list[str]) -> dict[str, Delivery]:
        wanted, columns = receipt_arrays(receipts)
        if not wanted:
            return {}
        out: dict[str, Delivery] = {}
        for row in await self._rows(q.IN_FLIGHT, topic, group, *columns):
            for receipt in wanted.get((row["partition"], row["offset"], row["delivery"]), []):
                out[receipt] = Delivery(topic, row["partition"], row["offset"], row["ts_ms"], row["payload"],
                                        row["attempt"], receipt)
        return out

    async def seek(self, topic: str, group: str, positions: dict[int, int]) -> dict[int, int]:
        parts = list(positions)
        rows = await self._rows(q.SEEK, topic, group, self.max_groups, parts,
                                [positions[p] for p in parts], self.channel)
        self._wakeups.wake(topic)
        return {r["r_partition"]: r["r_offset"] for r in rows}

    # inspection ------------------------------------------------------------------------

    async def _partitions(self, topic: str) -> list[Any]:
        rows = await self._rows(q.PARTITIONS, topic)
        if not rows:
            raise LookupError(f"topic {topic!r} does not exist")
        return rows

    async def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        rows = await self._rows(q.OFFSETS_FOR_TIME, topic, timestamp_ms)
        if not rows:
            raise LookupError(f"topic {topic!r} does not exist")
        return {r["partition"]: r["offset"] for r in rows}

    async def bounds(self, topic: str) -> dict[int, tuple[int, int]]:
        return {r["partition"]: (r["first_offset"], r["next_offset"]) for r in await self._partitions(topic)}

    async def read(self, topic: str, partition: int, offset: int, max_messages: int) -> list[Delivery]:
        rows = await self._rows(q.READ, topic, partition, max(offset, 0), max_messages)
        if not rows:
            count = await self._run(lambda conn: conn.fetchval(q.TOPIC_EXISTS, topic))
            if count is None:
                raise LookupError(f"topic {topic!r} does not exist")
            if not 0 <= partition < count:
                raise LookupError(f"topic {topic!r} has no partition {partition}")
        return [Delivery(topic, partition, r["offset"], r["ts_ms"], r["payload"], 0, "") for r in rows]

    async def groups(self, topic: str) -> list[str]:
        rows = await self._rows(q.GROUPS, topic)
        if not rows and await self._run(lambda conn: conn.fetchval(q.TOPIC_EXISTS, topic)) is None:
            raise LookupError(f"topic {topic!r} does not exist")
        return [r["name"] for r in rows]

    async def delete_group(self, topic: str, group: str) -> bool:
        async def work(conn: Any) -> bool:
            gid = await conn.fetchval(q.LOCK_GROUP, topic, group)
            if gid is None:
                return False
            await conn.execute(q.LOCK_CURSORS, gid)  # waits for loads in progress
            for sql in q.DROP_GROUP:
                await conn.execute(sql, gid)
            await conn.execute(q.NOTIFY, self.channel, topic)  # fetches waiting on it give up
            return True

        deleted = await self._in_transaction(work)
        self._group_ids.pop((topic, group), None)
        self._wakeups.wake(topic)
        return deleted

    async def group_stats(self, topic: str, group: str) -> GroupStats:
        rows = await self._rows(q.GROUP_STATS, topic, group)
        if not rows:
            raise LookupError(f"group {group!r} has not consumed {topic!r}")
        parts: dict[int, dict[str, int]] = {}
        for r in rows:
            committed = r["low"] if r["low"] is not None else r["read_pos"]
            parts[r["partition"]] = {"committed": committed, "next": r["next_offset"],
                                     "lag": r["next_offset"] - r["read_pos"] + r["pending"],
                                     "inFlight": r["flying"]}
        return GroupStats(group, sum(v["lag"] for v in parts.values()),
                          sum(v["inFlight"] for v in parts.values()), parts)

    async def topic_stats(self, topic: str) -> TopicStats:
        rows = await self._partitions(topic)
        firsts = [r["first_offset"] for r in rows]
        nexts = [r["next_offset"] for r in rows]
        return TopicStats(topic, len(rows), sum(n - f for f, n in zip(firsts, nexts, strict=True)),
                          sum(r["bytes"] for r in rows), firsts, nexts)

    async def enforce_retention(self, now_ms: int) -> None:
        """Every node may run this: each partition is trimmed in its own short transaction."""
        for row in await self._rows(q.ALL_PARTITIONS):
            await self._run(lambda conn, r=row: conn.fetchval(q.RETAIN, r["topic_id"], r["partition"], now_ms))
        await self._run(lambda conn: conn.execute(q.EXPIRE_DEDUP))


def _utf8(text: str) -> bytes:
    """Ids and keys go in as bytes: PostgreSQL text cannot hold NUL, and they need not be valid UTF-8."""
    return text.encode("utf-8", "surrogatepass")


def open_broker(url: str, settings: Settings) -> PostgresBroker:
    """The engine for ``postgresql://...?schema=NAME`` broker URLs (module.py calls this)."""
    del settings  # durability is PostgreSQL's own (synchronous_commit)
    return PostgresBroker(url)
