"""The Redis engine's own promises: nodes sharing one Redis, restarts, receipts, isolation, retention."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from mezzo.messaging.backend import Record, StaleReceiptError, TooManyGroupsError
from mezzo.messaging.backends.redis.broker import BrokerUnavailableError, RedisBroker, parse_receipt
from mezzo.messaging.backends.redis.keys import parse_url
from mezzo.messaging.model import TopicSpec
from mezzo.testing.fixtures import wait_for

pytestmark = pytest.mark.backend("redis")
TOPIC = "default/orders"


@pytest.fixture
def url(redis_url: str, redis_prefix: str) -> str:
    return f"{redis_url}?prefix={redis_prefix}"


async def _node(url: str, spec: TopicSpec | None = None) -> RedisBroker:
    broker = RedisBroker(url)
    await broker.open()
    await broker.ensure_topic(TOPIC, spec or TopicSpec())
    return broker


@pytest.fixture
async def nodes(url: str) -> AsyncIterator[tuple[RedisBroker, RedisBroker]]:
    """Two brokers on the same Redis and prefix: two Mezzo nodes of one installation."""
    a, b = await _node(url), await _node(url)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def _records(n: int, key: str | None = None, start: int = 0) -> list[Record]:
    return [Record(f"m{i}", f"{i}".encode(), key, 1000 + i) for i in range(start, start + n)]


async def test_url_options_are_split_from_the_redis_url() -> None:
    target = parse_url("redis://h:6380/2?prefix=app:mq:&replicas=1&health_check_interval=5")
    assert target.url == "redis://h:6380/2?health_check_interval=5"
    assert (target.prefix, target.replicas) == ("app:mq:", 1)
    assert parse_url("redis://h/0").prefix == "mezzo:mq:"
    with pytest.raises(ValueError):
        parse_url("redis://h/0?prefix={x}")


async def test_two_nodes_compete_on_one_group(nodes: tuple[RedisBroker, RedisBroker]) -> None:
    a, b = nodes
    await a.publish(TOPIC, _records(20), [0] * 20)
    seen: dict[int, str] = {}
    receipts: list[str] = []
    while len(seen) < 20:
        for node, name in ((a, "a"), (b, "b")):
            for d in await node.fetch(TOPIC, "workers", 3, 0.2, 30):
                assert d.offset not in seen  # one consumer per message
                seen[d.offset] = name
                receipts.append(d.receipt)
    assert set(seen.values()) == {"a", "b"}
    await b.ack(TOPIC, "workers", receipts)  # b acks what a delivered, too: the state is in Redis
    stats = await a.group_stats(TOPIC, "workers")
    assert (stats.lag, stats.in_flight) == (0, 0)


async def test_ack_on_one_node_wakes_a_fetch_waiting_behind_the_key_on_another(
        nodes: tuple[RedisBroker, RedisBroker]) -> None:
    a, b = nodes
    await a.publish(TOPIC, _records(2, key="k"), [0, 0])
    [first] = await a.fetch(TOPIC, "g", 10, 0.0, 30)
    assert await b.fetch(TOPIC, "g", 10, 0.0, 30) == []  # the key is in flight on a
    waiting = asyncio.create_task(b.fetch(TOPIC, "g", 10, 20.0, 30))
    await a.ack(TOPIC, "g", [first.receipt])
    [second] = await asyncio.wait_for(waiting, 15)
    assert (second.offset, second.payload, second.attempt) == (1, b"1", 1)


async def test_restart_rediscovers_topics_and_group_progress(url: str) -> None:
    first = await _node(url, TopicSpec(partitions=2))
    await first.publish(TOPIC, _records(4), [0, 0, 1, 1])
    taken = await first.fetch(TOPIC, "g", 10, 0.0, 30)
    await first.ack(TOPIC, "g", [d.receipt for d in taken if d.offset == 0])
    await first.close()
    again = RedisBroker(url)
    await again.open()
    try:
        assert again.topics() == [TOPIC] and again.has_topic(TOPIC)
        assert again._spec(TOPIC).partitions == 2
        stats = await again.group_stats(TOPIC, "g")
        assert (stats.lag, stats.in_flight) == (2, 2)
        assert sorted(d.receipt for d in taken if d.offset == 1) == sorted(
            (await again.in_flight(TOPIC, "g", [d.receipt for d in taken])).keys())
    finally:
        await again.close()


async def test_stale_receipts(nodes: tuple[RedisBroker, RedisBroker]) -> None:
    a, b = nodes
    await a.publish(TOPIC, _records(1), [0])
    [d] = await a.fetch(TOPIC, "g", 1, 0.0, 30)
    *_, epoch = parse_receipt(d.receipt)  # type: ignore[misc]
    forged = ["junk", "0:0:1", f"0:0:2:{epoch}", f"0:0:1:{epoch + 1}", f"7:0:1:{epoch}", f"0:5:1:{epoch}"]
    for receipt in forged:
        with pytest.raises(StaleReceiptError):
            await b.ack(TOPIC, "g", [receipt])
    assert await b.in_flight(TOPIC, "g", [*forged, d.receipt]) == {d.receipt: d}
    await b.nack(TOPIC, "g", [d.receipt], 0.0)
    with pytest.raises(StaleReceiptError):
        await a.ack(TOPIC, "g", [d.receipt])  # nacked: a newer delivery will come
    [again] = await wait_for(lambda: b.fetch(TOPIC, "g", 1, 0.2, 0.05))
    assert again.attempt == 2
    [third] = await wait_for(lambda: a.fetch(TOPIC, "g", 1, 0.2, 30))  # the 50 ms ack timeout ran out
    assert third.attempt == 3
    with pytest.raises(StaleReceiptError):
        await a.ack(TOPIC, "g", [again.receipt])
    await b.ack(TOPIC, "g", [third.receipt])
    with pytest.raises(StaleReceiptError):
        await b.ack(TOPIC, "g", [third.receipt])  # acked twice


async def test_seek_and_group_deletion_invalidate_receipts(nodes: tuple[RedisBroker, RedisBroker]) -> None:
    a, b = nodes
    await a.publish(TOPIC, _records(2), [0, 0])
    before = await a.fetch(TOPIC, "g", 10, 0.0, 30)
    assert await b.seek(TOPIC, "g", {0: 0}) == {0: 0}
    after = await a.fetch(TOPIC, "g", 10, 0.0, 30)
    assert [d.offset for d in after] == [0, 1] and all(d.attempt == 1 for d in after)
    with pytest.raises(StaleReceiptError):
        await a.ack(TOPIC, "g", [before[0].receipt])  # same offset and attempt, older epoch
    assert await b.delete_group(TOPIC, "g") and not await b.delete_group(TOPIC, "g")
    fresh = await a.fetch(TOPIC, "g", 10, 0.0, 30)
    assert [d.offset for d in fresh] == [0, 1]  # the name starts over
    with pytest.raises(StaleReceiptError):
        await a.ack(TOPIC, "g", [after[0].receipt])
    await a.ack(TOPIC, "g", [d.receipt for d in fresh])


async def test_deleting_a_group_ends_fetches_waiting_on_it(nodes: tuple[RedisBroker, RedisBroker]) -> None:
    a, b = nodes
    waiting = asyncio.create_task(b.fetch(TOPIC, "g", 1, 20.0, 30))
    await wait_for(lambda: a.groups(TOPIC))  # b's fetch created the group and waits
    await a.delete_group(TOPIC, "g")
    with pytest.raises(LookupError):
        await asyncio.wait_for(waiting, 15)


async def test_dedup_spans_nodes_and_keeps_the_original_position(nodes: tuple[RedisBroker, RedisBroker]) -> None:
    a, b = nodes
    [original] = await a.publish(TOPIC, [Record("pay-1", b"x", None, 1)], [0])
    again = await b.publish(TOPIC, [Record("other", b"y", None, 2), Record("pay-1", b"x", None, 3)], [0, 0])
    assert again[1].duplicate and (again[1].partition, again[1].offset) == (original.partition, original.offset)
    assert (await a.topic_stats(TOPIC)).messages == 2


async def test_group_limit_counts_groups_of_every_node(nodes: tuple[RedisBroker, RedisBroker]) -> None:
    a, b = nodes
    await b.fetch(TOPIC, "first", 1, 0.0, 30)
    a.max_groups = 1
    with pytest.raises(TooManyGroupsError):
        await a.fetch(TOPIC, "second", 1, 0.0, 30)
    assert await a.fetch(TOPIC, "first", 1, 0.0, 30) == []  # existing groups still work


async def test_new_partitions_join_existing_groups(nodes: tuple[RedisBroker, RedisBroker]) -> None:
    a, b = nodes
    assert await a.fetch(TOPIC, "g", 1, 0.0, 30) == []
    await b.ensure_topic(TOPIC, TopicSpec(partitions=3))
    await a.ensure_topic(TOPIC, TopicSpec(partitions=1))  # a stale spec never shrinks the topic
    assert len(await a.bounds(TOPIC)) == 3
    await b.publish(TOPIC, _records(1), [2])
    [d] = await a.fetch(TOPIC, "g", 1, 0.0, 30)
    assert (d.partition, d.offset) == (2, 0)


async def test_retention_forgets_pending_state_and_hands_keys_on(nodes: tuple[RedisBroker, RedisBroker]) -> None:
    a, b = nodes
    await a.ensure_topic(TOPIC, TopicSpec(retention_bytes=150))
    await b.ensure_topic(TOPIC, TopicSpec(retention_bytes=150))
    records = [Record(f"m{i}", b"x" * 100, "k", 1000 + i) for i in range(3)]  # 103 bytes each
    await a.publish(TOPIC, records, [0, 0, 0])
    [held] = await a.fetch(TOPIC, "g", 10, 0.0, 30)  # the others wait behind the key
    await b.enforce_retention(0)
    stats = await a.topic_stats(TOPIC)
    assert (stats.first_offsets, stats.messages, stats.bytes) == ([2], 1, 103)
    with pytest.raises(StaleReceiptError):
        await a.ack(TOPIC, "g", [held.receipt])
    [last] = await a.fetch(TOPIC, "g", 10, 0.0, 30)  # the key moved on to what is left
    assert last.offset == 2
    group = await a.group_stats(TOPIC, "g")
    assert (group.lag, group.in_flight) == (1, 1)


async def test_every_key_lives_under_the_prefix(url: str, redis_url: str, redis_prefix: str, unique: str) -> None:
    topic = f"default/iso-{unique}"
    broker = RedisBroker(url)
    other = RedisBroker(f"{redis_url}?prefix={redis_prefix}other:")
    await broker.open()
    await other.open()
    client = aioredis.from_url(redis_url)
    try:
        await broker.ensure_topic(topic, TopicSpec(partitions=2))
        await broker.publish(topic, [Record("a", b"1", "k", 1), Record("b", b"2", "k", 2)], [0, 1])
        [d, *_] = await broker.fetch(topic, "g", 10, 0.0, 30)
        await broker.nack(topic, "g", [d.receipt], 60)
        await broker.seek(topic, "h", {0: 0})
        assert other.topics() == [] and not other.has_topic(topic)  # another installation
        found = [k.decode() async for k in client.scan_iter(match=f"*iso-{unique}*")]
        assert found and all(k.startswith(redis_prefix) for k in found)
        await broker.delete_topic(topic)
        assert [k async for k in client.scan_iter(match=f"*iso-{unique}*")] == []
    finally:
        await client.aclose()
        await broker.close()
        await other.close()


async def test_unreachable_redis_is_not_ready_and_fails_fast() -> None:
    broker = RedisBroker("redis://127.0.0.1:1/0?prefix=mezzo-test:nowhere:", connect_timeout=1)
    with pytest.raises(BrokerUnavailableError, match="unreachable"):
        await broker.open()
    assert not await broker.ready()
    broker._topics[TOPIC] = TopicSpec()
    with pytest.raises(BrokerUnavailableError):
        await broker.fetch(TOPIC, "g", 1, 0.0, 30)
    await broker.close()
