"""The NATS JetStream engine's own behaviour: several nodes on one prefix, rediscovery, receipts, isolation.

The conformance suite covers the messaging semantics with one node; these tests run
two broker instances on the same URL, as two Mezzo nodes would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from mezzo.messaging.backend import Record, StaleReceiptError, TooManyGroupsError
from mezzo.messaging.backends.nats.broker import NatsBroker, open_broker
from mezzo.messaging.backends.nats.jetstream import BrokerUnavailable
from mezzo.messaging.backends.nats.names import DEFAULT_PREFIX, parse_url, token, untoken
from mezzo.messaging.model import TopicSpec
from mezzo.node.settings import Settings
from mezzo.testing import backends
from mezzo.testing.fixtures import wait_for

TOPIC = "default/orders.v1"


@pytest.fixture
async def url(nats_url: str, unique: str) -> AsyncIterator[str]:
    prefix = f"MZT{unique}"
    yield f"{nats_url}?prefix={prefix}"
    await backends.delete_nats_streams(nats_url, prefix)


@pytest.fixture
async def node() -> AsyncIterator[Callable[[str], NatsBroker]]:
    """Opens brokers (each one a 'node') and closes them at the end."""
    opened: list[NatsBroker] = []

    async def make(url: str) -> NatsBroker:
        broker = open_broker(url, Settings())
        await broker.open()
        opened.append(broker)
        return broker

    yield make  # type: ignore[misc]
    for broker in opened:
        await broker.close()


def records(*items: tuple[str, str | None]) -> list[Record]:
    return [Record(rid, rid.encode(), key, 1) for rid, key in items]


async def test_url_options_and_names() -> None:
    options = parse_url("nats://a:4222,b:4222")
    assert options.prefix == DEFAULT_PREFIX and options.servers == ["nats://a:4222", "nats://b:4222"]
    assert parse_url("nats://u:p@h:1?prefix=MZ_x&replicas=3").servers == ["nats://u:p@h:1"]
    for bad in ("nats://h?prefix=a.b", "nats://h?replicas=9", "nats://h?color=red"):
        with pytest.raises(ValueError):
            parse_url(bad)
    for name in ("default/orders.v1", "ns/_trace.x", "g-1"):
        tok = token(name)
        assert all(c.isalnum() or c in "-_" for c in tok) and untoken(tok) == name
    long = "n/" + "a." * 120
    assert len(token(long)) < 50 and untoken(token(long)) is None


async def test_two_nodes_compete_and_see_each_others_acks(url: str, node) -> None:  # type: ignore[no-untyped-def]
    a, b = await node(url), await node(url)
    await a.ensure_topic(TOPIC, TopicSpec(partitions=2))
    await b.ensure_topic(TOPIC, TopicSpec(partitions=2))
    await a.publish(TOPIC, records(*((f"m{i}", None) for i in range(10))), [i % 2 for i in range(10)])
    got_a = await a.fetch(TOPIC, "g", 4, 0, 30)
    got_b = await b.fetch(TOPIC, "g", 10, 0, 30)
    offsets = [(d.partition, d.offset) for d in got_a + got_b]
    assert len(offsets) == 10 and len(set(offsets)) == 10  # disjoint, all delivered
    await b.ack(TOPIC, "g", [d.receipt for d in got_a])  # another node's receipts are valid here
    stats = await a.group_stats(TOPIC, "g")
    assert stats.lag == 6 and stats.in_flight == 6
    assert await a.groups(TOPIC) == await b.groups(TOPIC) == ["g"]


async def test_key_order_holds_across_nodes(url: str, node) -> None:  # type: ignore[no-untyped-def]
    a, b = await node(url), await node(url)
    for broker in (a, b):
        await broker.ensure_topic(TOPIC, TopicSpec())
    await a.publish(TOPIC, records(("k1", "k"), ("k2", "k")), [0, 0])
    await b.publish(TOPIC, records(("k3", "k"), ("x", None)), [0, 0])  # b continues a's chain of key k
    [first, other] = await a.fetch(TOPIC, "g", 10, 0, 30)
    assert (first.payload, other.payload) == (b"k1", b"x")
    assert await b.fetch(TOPIC, "g", 10, 0, 30) == []  # k2 waits behind k1
    waiting = asyncio.create_task(b.fetch(TOPIC, "g", 10, 20, 30))
    await a.ack(TOPIC, "g", [first.receipt])
    [second] = await asyncio.wait_for(waiting, 15)  # the ack released it inside that long poll
    assert second.payload == b"k2" and second.attempt == 1
    await b.nack(TOPIC, "g", [second.receipt], 0)
    [again] = await wait_for(lambda: a.fetch(TOPIC, "g", 10, 0.5, 30))
    assert again.payload == b"k2" and again.attempt == 2  # nack kept k3 behind it
    await a.ack(TOPIC, "g", [again.receipt])
    [third] = await wait_for(lambda: b.fetch(TOPIC, "g", 10, 0.5, 30))
    assert third.payload == b"k3"


async def test_stale_receipts(url: str, node) -> None:  # type: ignore[no-untyped-def]
    a, b = await node(url), await node(url)
    for broker in (a, b):
        await broker.ensure_topic(TOPIC, TopicSpec())
    await a.publish(TOPIC, records(("one", None), ("two", None)), [0, 0])
    [one, two] = await a.fetch(TOPIC, "g", 2, 0, 0.2)
    # the ack timeout (the same on every node: one per group) passes; the other node gets attempt 2
    again = await wait_for(lambda: b.fetch(TOPIC, "g", 1, 0.5, 0.2))
    assert again[0].attempt == 2
    stale = one if again[0].offset == one.offset else two
    with pytest.raises(StaleReceiptError):
        await a.ack(TOPIC, "g", [stale.receipt])
    assert await b.in_flight(TOPIC, "g", [stale.receipt, again[0].receipt]) == {
        again[0].receipt: again[0]}
    await b.ack(TOPIC, "g", [again[0].receipt])
    with pytest.raises(StaleReceiptError):  # already acked
        await a.ack(TOPIC, "g", [again[0].receipt])
    rev = int(again[0].receipt.rsplit(":", 1)[1])
    for forged in ("junk", f"0:{again[0].offset + 1}:1:{rev + 1}", "9:1:1:1", "0:1:1:" + "9" * 25):
        with pytest.raises(StaleReceiptError):
            await a.nack(TOPIC, "g", [forged], 0)


async def test_seek_and_delete_group_start_over(url: str, node) -> None:  # type: ignore[no-untyped-def]
    a = await node(url)
    await a.ensure_topic(TOPIC, TopicSpec())
    await a.publish(TOPIC, records(("a", "k"), ("b", "k"), ("c", None)), [0, 0, 0])
    [held] = (await a.fetch(TOPIC, "g", 1, 0, 30))
    assert await a.seek(TOPIC, "g", {0: 1}) == {0: 1}
    with pytest.raises(StaleReceiptError):  # deliveries before a seek are forgotten
        await a.ack(TOPIC, "g", [held.receipt])
    got = await a.fetch(TOPIC, "g", 10, 0, 30)
    assert [d.payload for d in got] == [b"b", b"c"]  # b's predecessor is before the seek point
    assert await a.delete_group(TOPIC, "g") and not await a.delete_group(TOPIC, "g")
    assert [d.payload for d in await a.fetch(TOPIC, "g", 10, 0, 30)] == [b"a", b"c"]
    a.max_groups = 1
    with pytest.raises(TooManyGroupsError):
        await a.fetch(TOPIC, "other", 1, 0, 30)


async def test_dedup_is_topic_wide_across_partitions_and_nodes(url: str, node) -> None:  # type: ignore[no-untyped-def]
    a, b = await node(url), await node(url)
    for broker in (a, b):
        await broker.ensure_topic(TOPIC, TopicSpec(partitions=4))
    [first] = await a.publish(TOPIC, records(("same", None)), [1])
    [again] = await b.publish(TOPIC, records(("same", None)), [3])  # round robin put it elsewhere
    assert again.duplicate and (again.partition, again.offset) == (first.partition, first.offset)
    assert (await a.topic_stats(TOPIC)).messages == 1


async def test_a_new_node_discovers_topics_and_partitions_only_grow(url: str, node) -> None:  # type: ignore[no-untyped-def]
    a = await node(url)
    await a.ensure_topic(TOPIC, TopicSpec(partitions=3, retention=3600))
    await a.publish(TOPIC, records(("x", None)), [2])
    b = await node(url)
    assert b.topics() == [TOPIC] and b.has_topic(TOPIC)
    await b.ensure_topic(TOPIC, TopicSpec(partitions=1))
    assert len(await b.bounds(TOPIC)) == 3
    assert (await b.read(TOPIC, 2, 0, 10))[0].payload == b"x"
    await b.delete_topic(TOPIC)
    assert (await node(url)).topics() == []


async def test_prefixes_isolate(nats_url: str, unique: str, node) -> None:  # type: ignore[no-untyped-def]
    prefixes = [f"MZT{unique}a", f"MZT{unique}b"]
    try:
        a, b = await node(f"{nats_url}?prefix={prefixes[0]}"), await node(f"{nats_url}?prefix={prefixes[1]}")
        await a.ensure_topic(TOPIC, TopicSpec())
        await a.publish(TOPIC, records(("x", None)), [0])
        assert not b.has_topic(TOPIC)
        await b.ensure_topic(TOPIC, TopicSpec())
        assert (await b.topic_stats(TOPIC)).messages == 0
    finally:
        for prefix in prefixes:
            await backends.delete_nats_streams(nats_url, prefix)


async def test_unreachable_server_fails_fast_and_is_not_ready() -> None:
    broker = NatsBroker(parse_url("nats://127.0.0.1:1?prefix=MZTnowhere"), connect_timeout=0.5)
    assert not await broker.ready()
    with pytest.raises(BrokerUnavailable):
        await broker.open()


async def test_a_changed_ack_timeout_updates_the_consumers(url: str, node) -> None:  # type: ignore[no-untyped-def]
    a = await node(url)
    await a.ensure_topic(TOPIC, TopicSpec(partitions=2))
    await a.publish(TOPIC, records(("x", None)), [1])
    assert await a.fetch(TOPIC, "g", 1, 0, 3600) != []  # the consumers start with an hour
    await a.seek(TOPIC, "g", {0: 0, 1: 0})  # a seek keeps the ack timeout it was given
    [first] = await a.fetch(TOPIC, "g", 1, 0, 0.2)  # the subscription changed: now 200 ms
    [again] = await wait_for(lambda: a.fetch(TOPIC, "g", 1, 0.5, 0.2))
    assert (again.offset, again.attempt) == (first.offset, 2)
