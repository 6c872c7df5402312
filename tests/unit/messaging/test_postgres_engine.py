"""The PostgreSQL broker engine: what the conformance suite cannot see from one node.

Several brokers on one URL stand for several Mezzo nodes sharing the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from mezzo.messaging.backend import Record, StaleReceiptError, TooManyGroupsError
from mezzo.messaging.backends.postgres.broker import PostgresBroker
from mezzo.messaging.backends.postgres.database import BrokerUnavailable, broker_dsn
from mezzo.messaging.backends.postgres.receipts import parse_receipt
from mezzo.messaging.model import TopicSpec
from mezzo.testing.fixtures import free_port, wait_for

Open = Callable[..., Awaitable[PostgresBroker]]
TOPIC = "default/orders"


@pytest.fixture
async def open_broker(postgres_url: str) -> AsyncIterator[Open]:
    """Opens brokers (nodes) on the test's schema, or on another URL; closes them all afterwards."""
    opened: list[PostgresBroker] = []

    async def make(url: str = postgres_url) -> PostgresBroker:
        broker = PostgresBroker(url, pool_size=4)
        await broker.open()
        opened.append(broker)
        return broker

    yield make
    for broker in opened:
        await broker.close()


def records(count: int, key: str | None = None, start: int = 0) -> list[Record]:
    return [Record(f"m-{i}", f"{i}".encode(), key, 1000 + i) for i in range(start, start + count)]


async def test_url_schema_defaults_and_stays_out_of_the_dsn() -> None:
    assert broker_dsn("postgresql://u@h:5432/db") == ("postgresql://u@h:5432/db", "mezzo_mq")
    assert broker_dsn("postgresql://u@h/db?schema=t_1&sslmode=disable") == ("postgresql://u@h/db?sslmode=disable", "t_1")
    with pytest.raises(ValueError):
        broker_dsn("postgresql://u@h/db?schema=Bad-Name")


def test_malformed_receipts_parse_to_none() -> None:
    assert parse_receipt("0:5:1:77") == (0, 5, 1, 77)
    for junk in ["", "junk", "0:99:1", "1:2:3:4:5", "-1:0:1:1", "0:0:1:" + "9" * 19, "0:٣:1:1"]:
        assert parse_receipt(junk) is None


async def test_two_nodes_compete_on_one_group(open_broker: Open) -> None:
    a, b = await open_broker(), await open_broker()
    await a.ensure_topic(TOPIC, TopicSpec(partitions=3))
    await b.ensure_topic(TOPIC, TopicSpec(partitions=3))
    await a.publish(TOPIC, records(60), [i % 3 for i in range(60)])
    seen: list[tuple[int, int]] = []

    async def consume(node: PostgresBroker) -> None:
        while True:
            batch = await node.fetch(TOPIC, "workers", 7, 0, 30)
            if not batch:
                return
            seen.extend((d.partition, d.offset) for d in batch)
            await node.ack(TOPIC, "workers", [d.receipt for d in batch])

    await asyncio.gather(consume(a), consume(b), consume(a), consume(b))
    assert len(seen) == len(set(seen)) == 60  # every message once, to exactly one consumer
    stats = await b.group_stats(TOPIC, "workers")  # acks from both nodes are in the engine
    assert stats.lag == 0 and stats.in_flight == 0


async def test_keys_stay_ordered_across_competing_nodes(open_broker: Open) -> None:
    a, b = await open_broker(), await open_broker()
    for node in (a, b):
        await node.ensure_topic(TOPIC, TopicSpec())
    batch = [Record(f"m-{n}-{k}", f"{k}:{n}".encode(), k, 0) for n in range(8) for k in "abcd"]
    await a.publish(TOPIC, batch, [0] * len(batch))
    order: dict[str, list[int]] = {k: [] for k in "abcd"}
    holding: set[str] = set()

    async def consume(node: PostgresBroker) -> None:
        idle = 0
        while idle < 3:
            got = await node.fetch(TOPIC, "g", 3, 0.2, 30)
            idle = 0 if got else idle + 1
            keys = [d.payload.decode().split(":")[0] for d in got]
            assert not holding & set(keys) and len(set(keys)) == len(keys)  # one in flight per key
            holding.update(keys)
            await asyncio.sleep(0)  # let the other node try to take the same keys
            for key, delivery in zip(keys, got, strict=True):
                order[key].append(int(delivery.payload.decode().split(":")[1]))
                holding.discard(key)
                await node.ack(TOPIC, "g", [delivery.receipt])

    await asyncio.gather(consume(a), consume(b))
    assert order == {k: list(range(8)) for k in "abcd"}


async def test_stale_receipts(open_broker: Open) -> None:
    a, b = await open_broker(), await open_broker()
    await a.ensure_topic(TOPIC, TopicSpec())
    await a.publish(TOPIC, records(2), [0, 0])
    first, second = await a.fetch(TOPIC, "g", 2, 0, 30)
    assert parse_receipt(first.receipt) is not None and first.attempt == 1

    await b.nack(TOPIC, "g", [first.receipt], 0)  # another node's nack
    with pytest.raises(StaleReceiptError):
        await a.ack(TOPIC, "g", [first.receipt])
    [again] = await a.fetch(TOPIC, "g", 1, 0, 0.05)  # short ack timeout: it will lapse
    assert again.offset == first.offset and again.attempt == 2
    [third] = await wait_for(lambda: b.fetch(TOPIC, "g", 1, 0, 30))  # redelivered after the timeout
    assert third.attempt == 3
    with pytest.raises(StaleReceiptError):
        await b.nack(TOPIC, "g", [again.receipt], 0)
    forged = f"{third.partition}:{third.offset}:{third.attempt}:{int(third.receipt.split(':')[3]) + 1}"
    with pytest.raises(StaleReceiptError):
        await a.ack(TOPIC, "g", [forged, "junk"])
    assert set(await a.in_flight(TOPIC, "g", [second.receipt, third.receipt, forged])) == {
        second.receipt, third.receipt}

    await b.seek(TOPIC, "g", {0: 0})  # a seek starts over: earlier receipts are void
    with pytest.raises(StaleReceiptError):
        await a.ack(TOPIC, "g", [second.receipt])
    redone = await a.fetch(TOPIC, "g", 2, 0, 30)
    assert [d.attempt for d in redone] == [1, 1]
    await b.ack(TOPIC, "g", [d.receipt for d in redone])
    with pytest.raises(StaleReceiptError):  # acked once already
        await a.ack(TOPIC, "g", [redone[0].receipt])


async def test_deleted_group_starts_over_on_every_node(open_broker: Open) -> None:
    a, b = await open_broker(), await open_broker()
    await a.ensure_topic(TOPIC, TopicSpec())
    await a.publish(TOPIC, records(1), [0])
    [d] = await b.fetch(TOPIC, "g", 1, 0, 30)  # b now caches the group's id
    await b.ack(TOPIC, "g", [d.receipt])
    assert await a.delete_group(TOPIC, "g") and not await a.delete_group(TOPIC, "g")
    [again] = await b.fetch(TOPIC, "g", 1, 0, 30)  # its cached id is gone: the new group starts at 0
    assert again.offset == 0 and again.attempt == 1
    with pytest.raises(StaleReceiptError):
        await a.ack(TOPIC, "g", [d.receipt])


async def test_a_waiting_fetch_wakes_on_another_nodes_publish_and_delete(open_broker: Open) -> None:
    a, b = await open_broker(), await open_broker()
    for node in (a, b):
        await node.ensure_topic(TOPIC, TopicSpec())
    waiting = asyncio.create_task(a.fetch(TOPIC, "g", 10, 30, 30))
    await wait_for(lambda: TOPIC in a._wakeups._events)  # the fetch is waiting
    await b.publish(TOPIC, records(1), [0])
    [d] = await asyncio.wait_for(waiting, 25)
    assert d.payload == b"0"

    waiting = asyncio.create_task(a.fetch(TOPIC, "g", 10, 30, 30))
    await wait_for(lambda: TOPIC in a._wakeups._events)
    await b.delete_group(TOPIC, "g")
    with pytest.raises(LookupError):  # the group went while it waited
        await asyncio.wait_for(waiting, 25)


async def test_restarted_node_finds_topics_groups_and_dedup(open_broker: Open) -> None:
    first = await open_broker()
    await first.ensure_topic(TOPIC, TopicSpec(partitions=2, dedup_window=3600))
    [pos] = await first.publish(TOPIC, [Record("once", b"x")], [1])
    await first.publish(TOPIC, records(3), [0, 0, 0])
    got = await first.fetch(TOPIC, "g", 2, 0, 30)
    await first.ack(TOPIC, "g", [got[0].receipt])
    await first.close()

    again = await open_broker()
    assert again.topics() == [TOPIC] and again.has_topic(TOPIC)
    [dup] = await again.publish(TOPIC, [Record("once", b"y")], [0])
    assert dup.duplicate and (dup.partition, dup.offset) == (pos.partition, pos.offset)
    stats = await again.group_stats(TOPIC, "g")
    assert stats.in_flight == 1 and stats.partitions[0]["committed"] == 1
    with pytest.raises(TooManyGroupsError):
        again.max_groups = 1
        await again.fetch(TOPIC, "other", 1, 0, 30)


async def test_partitions_grow_for_existing_groups(open_broker: Open) -> None:
    a = await open_broker()
    await a.ensure_topic(TOPIC, TopicSpec(partitions=1))
    await a.fetch(TOPIC, "g", 1, 0, 30)  # the group exists before the topic grows
    await a.ensure_topic(TOPIC, TopicSpec(partitions=3))
    await a.ensure_topic(TOPIC, TopicSpec(partitions=2))  # never shrinks
    assert len(await a.bounds(TOPIC)) == 3
    await a.publish(TOPIC, records(3), [0, 1, 2])
    got = await a.fetch(TOPIC, "g", 10, 0, 30)
    assert sorted(d.partition for d in got) == [0, 1, 2]


async def test_retention_moves_groups_past_dropped_messages_and_frees_keys(open_broker: Open) -> None:
    a = await open_broker()
    await a.ensure_topic(TOPIC, TopicSpec(retention=60))
    await a.publish(TOPIC, [Record(f"o-{i}", b"old", "k", 1_000) for i in range(3)], [0, 0, 0])
    [held] = await a.fetch(TOPIC, "g", 10, 0, 30)  # k's head in flight; two more wait behind it
    await a.publish(TOPIC, [Record("new", b"new", "k", 10_000_000)], [0])
    await a.enforce_retention(1_000 + 61_000)  # the three old ones are past 60 s
    assert await a.bounds(TOPIC) == {0: (3, 4)}
    assert (await a.topic_stats(TOPIC)).messages == 1
    with pytest.raises(StaleReceiptError):
        await a.ack(TOPIC, "g", [held.receipt])
    [d] = await a.fetch(TOPIC, "g", 10, 0, 30)  # the key is free again
    assert d.payload == b"new" and d.offset == 3
    assert await a.offsets_for_time(TOPIC, 5_000) == {0: 3}
    assert await a.offsets_for_time(TOPIC, 20_000_000) == {0: 4}


async def test_schemas_are_isolated_and_deletion_leaves_nothing(open_broker: Open, postgres_url: str) -> None:
    import asyncpg

    from mezzo.testing import backends

    other_url = postgres_url.replace("schema=", "schema=o")
    try:
        a, other = await open_broker(), await open_broker(other_url)
        await a.ensure_topic(TOPIC, TopicSpec())
        await a.publish(TOPIC, records(2), [0, 0])
        await a.fetch(TOPIC, "g", 1, 0, 30)
        assert other.topics() == [] and a.channel != other.channel
        with pytest.raises(LookupError):
            await other.bounds(TOPIC)
        await a.delete_topic(TOPIC)
        assert a.topics() == []
        dsn, schema = broker_dsn(postgres_url)
        conn = await asyncpg.connect(dsn)
        try:
            tables = [r["relname"] for r in await conn.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname LIKE 'mq\\_%' AND c.relname <> 'mq_schema_migrations'",
                schema)]
            counts = {t: await conn.fetchval(f'SELECT count(*) FROM "{schema}"."{t}"') for t in tables}
        finally:
            await conn.close()
        assert counts and not any(counts.values()), counts
    finally:
        await backends.drop_postgres_schema(postgres_url, broker_dsn(other_url)[1])


async def test_unreachable_server_fails_fast_and_clearly() -> None:
    pytest.importorskip("asyncpg")
    broker = PostgresBroker(f"postgresql://postgres@127.0.0.1:{free_port()}/test?schema=t_none")
    with pytest.raises(BrokerUnavailable, match="unavailable"):
        await asyncio.wait_for(broker.open(), 30)
    assert not await broker.ready()
    with pytest.raises(BrokerUnavailable):
        await broker.fetch(TOPIC, "g", 1, 0, 30)


async def test_any_string_is_an_id_or_key(open_broker: Open) -> None:
    a = await open_broker()
    await a.ensure_topic(TOPIC, TopicSpec())
    odd = ["nul\x00inside", "\ud800 lone surrogate", "ü"]
    first = await a.publish(TOPIC, [Record(s, b"x", s) for s in odd], [0, 0, 0])
    again = await a.publish(TOPIC, [Record(s, b"x", s) for s in odd], [0, 0, 0])
    assert [p.offset for p in first] == [0, 1, 2] and all(p.duplicate for p in again)
    assert len(await a.fetch(TOPIC, "g", 10, 0, 30)) == 3  # three different keys
