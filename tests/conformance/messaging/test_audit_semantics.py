"""Audit of issue 3's semantics against every broker engine: the requirements that had no test,
or only a test that could not fail if the feature broke."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from mezzo.messaging.service import MessagingService
from mezzo.sdk.errors import Conflict
from mezzo.testing.fixtures import RunningNode, start_node, wait_for

from .test_messaging import drain


def _http(node: RunningNode) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"}, timeout=30)


async def _apply(node: RunningNode, *docs: dict[str, Any]) -> None:
    async with node.client() as client:
        await client.resources.apply(list(docs))


def _subscription(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mezzo.dev/v1", "kind": "Subscription", "metadata": {"name": name}, "spec": spec}


def _topic(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "mezzo.dev/v1", "kind": "Topic", "metadata": {"name": name}, "spec": spec}


async def _lag(client: Any, topic: str, group: str) -> dict[str, int]:
    return {g["group"]: g for g in await client.messaging.groups(topic)}[group]  # type: ignore[no-any-return]


async def test_an_ack_with_a_stale_receipt_still_acks_the_others(mq: RunningNode) -> None:
    """docs: a stale receipt is a 409 and 'the request's other receipts still take effect'."""
    async with mq.client() as client:
        await client.messaging.publish_batch("partial", [{"data": 1}, {"data": 2}])
        sub = client.messaging.subscribe("partial", "g", batch=10)
        first, second = await drain(sub, 2)
        await first.ack()
        with pytest.raises(Conflict):
            await sub.ack([first, second])  # first: already acked; second: live
        assert await sub.pull(wait=0.3) == []
        assert (await _lag(client, "partial", "g"))["lag"] == 0


async def test_nack_with_a_delay_holds_the_message_back(mq: RunningNode) -> None:
    async with mq.client() as client:
        await client.messaging.publish_batch("later", [{"data": "slow"}, {"data": "quick"}])
        sub = client.messaging.subscribe("later", "g", batch=10)
        slow, quick = await drain(sub, 2)
        await slow.nack(delay="1h")
        await quick.nack(delay=0)
        [again] = await drain(sub, 1)
        assert again.data == "quick" and again.attempt == 2
        assert await sub.pull(wait=0.3) == []  # 'slow' waits out its hour


async def test_backoff_grows_exponentially_per_subscription(mq: RunningNode) -> None:
    """The retry delay of a nack without one is the subscription's backoff for that attempt:
    initial, then times multiplier, capped at max (read from the message trace, not timed)."""
    await _apply(mq, _topic("backoff", trace=True),
                 _subscription("backoff-g", topic="backoff", group="g", maxDeliveries=5,
                               backoff={"initial": "10ms", "max": "50ms", "multiplier": 3}))
    svc = mq.node.service(MessagingService)
    await wait_for(lambda: svc.topics.get("default/backoff") and ("default/backoff", "g") in svc.subscriptions)
    async with mq.client() as client:
        await client.messaging.publish("backoff", "x", id="b-1")
        sub = client.messaging.subscribe("backoff", "g")
        for _ in range(3):
            [m] = await drain(sub, 1)
            await m.nack()
        events = await client.messaging.trace("b-1")
    assert [e["retryIn"] for e in events if e["event"] == "nacked"] == [0.01, 0.03, 0.05]


async def test_a_nacked_message_holds_back_the_rest_of_its_key(mq: RunningNode) -> None:
    async with mq.client() as client:
        await client.messaging.publish_batch("held", [{"data": 1, "key": "k"}, {"data": 2, "key": "k"},
                                                      {"data": 3, "key": "other"}])
        sub = client.messaging.subscribe("held", "g", batch=10)
        got = await drain(sub, 2)
        assert sorted(m.data for m in got) == [1, 3]
        one = next(m for m in got if m.data == 1)
        await one.nack(delay="1h")
        await sub.ack([m for m in got if m.data == 3])
        assert await sub.pull(wait=0.3) == []  # 2 waits behind 1, whose retry is an hour away


async def test_trace_records_the_ack(mq: RunningNode) -> None:
    await _apply(mq, _topic("acked", trace=True))
    svc = mq.node.service(MessagingService)
    await wait_for(lambda: svc.topics.get("default/acked"))
    async with mq.client() as client:
        await client.messaging.publish("acked", "x", id="a-1")
        [m] = await drain(client.messaging.subscribe("acked", "g", consumer="c-1"), 1)
        await m.ack()
        events = await client.messaging.trace("a-1", topic="acked")
    assert [(e["event"], e.get("group"), e.get("attempt")) for e in events] == [
        ("published", None, None), ("delivered", "g", 1), ("acked", "g", 1)]
    assert events[1]["consumer"] == "c-1"


async def test_seek_to_a_time_between_messages(mq: RunningNode) -> None:
    async with mq.client() as client:
        await client.messaging.publish_batch("when", [{"data": "old"}])
        boundary_ms = await wait_for(lambda: _later_ms(mq, "when"))  # a clock tick after the first publish
        await client.messaging.publish_batch("when", [{"data": "new-1"}, {"data": "new-2"}])
        sub = client.messaging.subscribe("when", "g", batch=10)
        await sub.ack(await drain(sub, 3))
        await sub.seek(datetime.fromtimestamp(boundary_ms / 1000, UTC))
        assert [m.data for m in await drain(sub, 2)] == ["new-1", "new-2"]
        assert await sub.pull(wait=0.2) == []


async def _later_ms(node: RunningNode, topic: str) -> int | None:
    """A time in ms strictly after the topic's last message was stored (None until the clock moved)."""
    svc = node.node.service(MessagingService)
    ref = f"default/{topic}"
    _, end = (await svc.broker.bounds(ref))[0]
    [last] = await svc.broker.read(ref, 0, end - 1, 1)
    now = int(time.time() * 1000)
    return now if now > last.timestamp_ms else None


async def test_seek_per_partition_and_out_of_range(mq: RunningNode) -> None:
    await _apply(mq, _topic("parts", partitions=2))
    svc = mq.node.service(MessagingService)
    await wait_for(lambda: svc.topics.get("default/parts"))
    async with mq.client() as client:
        await client.messaging.publish_batch("parts", [{"data": i, "key": f"k{i % 3}"} for i in range(9)])
        sub = client.messaging.subscribe("parts", "g", batch=20)
        acked = 0
        while acked < 9:  # one message per key in flight: ack to get the next
            batch = await drain(sub, 1)
            await sub.ack(batch)
            acked += len(batch)
        bounds = await svc.broker.bounds("default/parts")
        p = next(p for p, (_, end) in bounds.items() if end >= 3)
        assert await sub.seek({p: 2}) == {str(p): 2}
        [m] = await drain(client.messaging.subscribe("parts", "g", batch=1), 1)
        assert (m.partition, m.offset) == (p, 2)
        ends = {str(p): end for p, (_, end) in bounds.items()}
        assert await sub.seek(10**9) == ends  # past the end: stops at the end
    async with _http(mq) as http:
        before = await http.post("/v1/topics/parts/groups/g:seek", json={"to": {"0": -1}})
        assert before.json()["positions"] == {"0": bounds[0][0]}  # before the start: from the first kept
        for bad in ({"to": {"7": 0}}, {"to": "yesterday"}, {"to": [1]}):
            r = await http.post("/v1/topics/parts/groups/g:seek", json=bad)
            assert r.status_code == 400, (bad, r.text)
            assert r.headers["content-type"] == "application/problem+json"


async def test_metrics_count_redeliveries_dead_letters_and_lag(mq: RunningNode) -> None:
    await _apply(mq, _subscription("metered-g", topic="metered2", group="g", maxDeliveries=2,
                                   backoff={"initial": "1ms", "max": "1ms"}))
    svc = mq.node.service(MessagingService)
    await wait_for(lambda: ("default/metered2", "g") in svc.subscriptions)
    async with mq.client() as client:
        await client.messaging.publish_batch("metered2", [{"data": "bad", "key": "k"}, {"data": "waiting", "key": "k"}])
        sub = client.messaging.subscribe("metered2", "g", batch=1)
        for _ in range(2):
            [m] = await drain(sub, 1)
            assert m.data == "bad"
            await m.nack()
        text = (await client._http.get("/metrics")).text
    labels = '{group="g",namespace="default",topic="metered2"}'
    assert f"mezzo_messaging_redelivered_total{labels} 1.0" in text
    assert f"mezzo_messaging_dead_lettered_total{labels} 1.0" in text
    assert f"mezzo_messaging_lag_messages{labels} 1.0" in text  # 'waiting' was never delivered
    assert 'mezzo_messaging_published_total{group="",namespace="default",topic="metered2"} 2.0' in text


async def test_a_consumer_that_crashes_mid_batch_gets_the_rest_again(mq: RunningNode) -> None:
    """A WebSocket consumer takes five, acks two and dies: the other three come back (attempt 2)."""
    import websockets

    await _apply(mq, _subscription("crash-g", topic="crash", group="g", ackTimeout="2s"))
    svc = mq.node.service(MessagingService)
    await wait_for(lambda: ("default/crash", "g") in svc.subscriptions)
    async with mq.client() as client:
        await client.messaging.publish_batch("crash", [{"data": i} for i in range(5)])
    url = mq.url.replace("http", "ws", 1) + "/v1/topics/crash/groups/g:connect?maxInFlight=5"
    got: list[dict[str, Any]] = []
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {mq.token}"}) as ws:
        while len(got) < 5:
            got += orjson.loads(await ws.recv())["messages"]
        await ws.send(orjson.dumps({"ack": [m["receipt"] for m in got[:2]]}).decode())
        await wait_for(lambda: _lag_is(mq, "crash", 3))
        ws.transport.abort()  # a crash: no close handshake
    async with mq.client() as client:
        again = await drain(client.messaging.subscribe("crash", "g", batch=10), 3)
    assert sorted(m.data for m in again) == sorted(m["data"] for m in got[2:])
    assert {m.attempt for m in again} == {2}


async def _lag_is(node: RunningNode, topic: str, want: int) -> bool:
    async with node.client() as client:
        return (await _lag(client, topic, "g"))["lag"] == want


async def test_a_message_of_the_maximum_size_is_taken_and_one_byte_more_is_413(mq: RunningNode) -> None:
    """Default maxMessageBytes is 1 MiB. NATS stores at most its server's max_payload (1 MiB by default)
    with Mezzo's envelope: there a message too big for the server (or to be dead-lettered, which adds
    attributes) is a 413 too, when published, also when delayed (it used to be accepted, then dropped
    when due) or prepared. The largest message taken can be dead-lettered."""
    from mezzo.messaging.service import LETTER_ROOM

    await _apply(mq, _subscription("sized-g", topic="sized", group="g", maxDeliveries=1))
    svc = mq.node.service(MessagingService)
    await wait_for(lambda: ("default/sized", "g") in svc.subscriptions)
    engine_limit = svc.broker.record_limit
    limit = 1024 * 1024 if engine_limit is None else engine_limit - LETTER_ROOM - 200
    octets = {"content-type": "application/octet-stream"}
    async with _http(mq) as http:
        r = await http.post("/v1/topics/sized:publish", content=b"x" * limit, headers=octets)
        assert r.status_code == 200, r.text[:300]
        too_big = [("/v1/topics/sized:publish", {"content": b"x" * (1024 * 1024 + 1), "headers": octets})]
        if engine_limit is not None:
            near = engine_limit - 200  # fits the server, but not as a dead letter
            too_big += [("/v1/topics/sized:publish", {"content": b"x" * near, "headers": octets}),
                        ("/v1/topics/sized:publish?delay=1h", {"content": b"x" * near, "headers": octets}),
                        ("/v1/topics/sized:prepare", {"json": {"messages": [{"data": "x" * near}]}})]
        for path, kwargs in too_big:
            r = await http.post(path, **kwargs)
            assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json", r.text[:300]
            assert r.json()["errors"][0]["field"] == "messages[0]"
    async with mq.client() as client:
        [m] = await drain(client.messaging.subscribe("sized", "g"), 1)
        assert len(m.data) == limit
        await m.nack()  # its last attempt: dead-lettered
        [letter] = await client.messaging.read("sized.g.dlq")
        assert letter.attributes["mezzo.dlq.topic"] == "sized"


async def test_retention_by_time_removes_old_messages(mq: RunningNode) -> None:
    await _apply(mq, _topic("aging", retention="1s", segmentBytes="4KiB"))
    svc = mq.node.service(MessagingService)
    await wait_for(lambda: svc.topics.get("default/aging"))
    async with mq.client() as client:
        for _ in range(4):  # several requests: the embedded engine rolls segments between appends
            await client.messaging.publish_batch("aging", [{"data": "x" * 500} for _ in range(10)])

        async def trimmed() -> bool:
            await svc.broker.enforce_retention(int(time.time() * 1000))
            return (await client.messaging.topics())[0]["messages"] < 40

        await wait_for(trimmed, timeout=20, interval=0.2)


async def test_delays_of_any_length_and_a_time_in_the_past(mq: RunningNode) -> None:
    async with mq.client() as client:
        far = await client.messaging.publish("far", "decades", delay="36500d")
        assert far["scheduledAt"].startswith(str(datetime.now(UTC).year + 99)[:2])
        last = await client.messaging.publish("far", "y9999", deliver_at=datetime(9999, 12, 31, tzinfo=UTC))
        assert last["scheduledAt"].startswith("9999-12-31")
        past = await client.messaging.publish("far", "now", deliver_at=datetime(2001, 1, 1, tzinfo=UTC))
        assert past["offset"] == 0  # due already: stored at once
        got = await drain(client.messaging.subscribe("far", "g"), 1)
        assert [m.data for m in got] == ["now"]
    async with _http(mq) as http:
        r = await http.post("/v1/topics/far:publish", json={"data": 1, "delay": "4000000d"})
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "delay", r.text


async def test_half_messages_survive_a_restart(mq: RunningNode) -> None:
    async with mq.client() as client:
        tx = await client.messaging.transaction("halves", [{"data": "kept"}]).prepare()
    await mq.node.stop()
    again = await start_node(mq.data_dir, broker=mq.node.settings.broker)
    try:
        async with again.client() as client:
            pending = await client.request("GET", "/v1/topics/halves/transactions")
            assert [p["transaction"] for p in pending["items"]] == [tx.id]
            tx._api = client.messaging
            await tx.commit()
            got = await drain(client.messaging.subscribe("halves", "g"), 1)
            assert [m.data for m in got] == ["kept"]
    finally:
        await again.node.stop()


async def test_dedup_is_topic_wide_across_partitions(mq: RunningNode) -> None:
    await _apply(mq, _topic("spread", partitions=4))
    svc = mq.node.service(MessagingService)
    await wait_for(lambda: svc.topics.get("default/spread"))
    async with mq.client() as client:
        first = await client.messaging.publish("spread", 0, id="once")
        again = [await client.messaging.publish("spread", n, id="once", key=f"k{n}") for n in range(1, 5)]
        assert all(r["duplicate"] and (r["partition"], r["offset"]) == (first["partition"], first["offset"])
                   for r in again), again
        assert sum(t["messages"] for t in await client.messaging.topics()) == 1


async def test_publishing_creates_a_topic_resource_and_deleting_it_deletes_the_topic(mq: RunningNode) -> None:
    from mezzo.sdk.errors import NotFound

    svc = mq.node.service(MessagingService)
    async with mq.client() as client:
        await client.messaging.publish("made", "x")
        made = await client.resources.get("Topic", "made")
        assert made.metadata.labels == {"mezzo.dev/auto-created": "true"}
        await client.resources.delete("Topic", "made")
        await wait_for(lambda: not svc.broker.has_topic("default/made"))
        assert [t["name"] for t in await client.messaging.topics()] == []
        with pytest.raises(NotFound):
            await client.messaging.subscribe("made", "g").pull()
        await client.messaging.publish("made", "y")  # and publishing creates it afresh, empty
        assert [m.data for m in await drain(client.messaging.subscribe("made", "g"), 1)] == ["y"]
