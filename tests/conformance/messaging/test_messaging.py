"""Messaging semantics, the same on every broker engine."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from mezzo.messaging.service import MessagingService
from mezzo.sdk.errors import APIError, Conflict, NotFound
from mezzo.testing.fixtures import RunningNode, wait_for


async def drain(sub, want: int, timeout: float = 10.0) -> list:  # type: ignore[no-untyped-def]
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += await sub.pull(wait=0.5)
    return got


async def test_publish_pull_ack_and_groups(mq: RunningNode) -> None:
    async with mq.client() as client:
        for i in range(5):
            await client.messaging.publish("orders", {"n": i})
        async with client.messaging.subscribe("orders", "billing") as billing, \
                client.messaging.subscribe("orders", "shipping") as shipping:
            got = await drain(billing, 5)
            assert [m.data["n"] for m in got] == [0, 1, 2, 3, 4]
            assert all(m.attempt == 1 for m in got)
            for m in got:
                await m.ack()
            assert [m.data["n"] for m in await drain(shipping, 5)] == [0, 1, 2, 3, 4]  # every group gets all
            assert await billing.pull(wait=0.1) == []
        groups = {g["group"]: g for g in await client.messaging.groups("orders")}
        assert groups["billing"]["lag"] == 0 and groups["shipping"]["inFlight"] == 5


async def test_competing_consumers_share_a_group(mq: RunningNode) -> None:
    async with mq.client() as client:
        await client.messaging.publish_batch("jobs", [{"data": i} for i in range(20)])
        a = client.messaging.subscribe("jobs", "workers", batch=3)
        b = client.messaging.subscribe("jobs", "workers", batch=3)
        seen: list[int] = []
        while len(seen) < 20:
            for sub in (a, b):
                batch = await sub.pull(wait=0.2)
                seen += [m.data for m in batch]
                await sub.ack(batch)
        assert sorted(seen) == list(range(20))  # each message went to exactly one consumer


async def test_dedup_window(mq: RunningNode) -> None:
    async with mq.client() as client:
        first = await client.messaging.publish("pay", "x", id="payment-1")
        again = await client.messaging.publish("pay", "x", id="payment-1")
        assert again["duplicate"] and again["offset"] == first["offset"]
        batch = await client.messaging.publish_batch("pay", [{"data": 1, "id": "b"}, {"data": 2, "id": "b"}])
        assert [r["duplicate"] for r in batch] == [False, True]
        assert (await client.messaging.topics())[0]["messages"] == 2


async def test_per_key_order_one_in_flight(mq: RunningNode) -> None:
    async with mq.client() as client:
        await client.resources.apply({"apiVersion": "mezzo.dev/v1", "kind": "Topic",
                                      "metadata": {"name": "events"}, "spec": {"partitions": 4}})
        await wait_for(lambda: mq.node.service(MessagingService).topics.get("default/events"))
        msgs = [{"data": {"k": k, "n": n}, "key": k} for n in range(5) for k in ("a", "b", "c")]
        await client.messaging.publish_batch("events", msgs)
        sub = client.messaging.subscribe("events", "g", batch=100)
        first = await drain(sub, 3)
        assert sorted(m.data["k"] for m in first) == ["a", "b", "c"]  # one per key in flight
        assert all(m.data["n"] == 0 for m in first)
        order: dict[str, list[int]] = {"a": [0], "b": [0], "c": [0]}
        pending = first
        while pending:
            await sub.ack(pending)
            pending = await sub.pull(wait=0.5)
            assert len({m.data["k"] for m in pending}) == len(pending)
            for m in pending:
                order[m.data["k"]].append(m.data["n"])
        assert order == {k: [0, 1, 2, 3, 4] for k in "abc"}


async def test_nack_redelivers_with_attempt_count(mq: RunningNode) -> None:
    async with mq.client() as client:
        await client.messaging.publish("retry", "hello")
        sub = client.messaging.subscribe("retry", "g")
        [m] = await drain(sub, 1)
        await m.nack(0)
        [again] = await drain(sub, 1)
        assert again.attempt == 2 and again.id == m.id
        with pytest.raises(Conflict):  # the first delivery's receipt is stale now
            await m.ack()
        await again.ack()


async def test_ack_timeout_redelivers(mq: RunningNode) -> None:
    async with mq.client() as client:
        await client.resources.apply({"apiVersion": "mezzo.dev/v1", "kind": "Subscription",
                                      "metadata": {"name": "quick"},
                                      "spec": {"topic": "slow", "group": "g", "ackTimeout": "100ms"}})
        svc = mq.node.service(MessagingService)
        await wait_for(lambda: svc.subscriptions)
        await client.messaging.publish("slow", "work")
        sub = client.messaging.subscribe("slow", "g")
        [m] = await drain(sub, 1)
        [again] = await drain(sub, 1)  # never acked: comes back after the ack timeout
        assert again.attempt == 2 and again.id == m.id


async def test_dead_letters_after_max_deliveries_and_replay(mq: RunningNode) -> None:
    async with mq.client() as client:
        await client.resources.apply({"apiVersion": "mezzo.dev/v1", "kind": "Subscription",
                                      "metadata": {"name": "billing-orders"},
                                      "spec": {"topic": "orders", "group": "billing", "maxDeliveries": 2,
                                               "backoff": {"initial": "1ms", "max": "1ms"},
                                               "deadLetterTopic": "orders-dlq"}})
        svc = mq.node.service(MessagingService)
        await wait_for(lambda: svc.subscriptions)
        await client.messaging.publish("orders", {"bad": True}, key="o-1")
        sub = client.messaging.subscribe("orders", "billing")
        for attempt in (1, 2):
            [m] = await drain(sub, 1)
            assert m.attempt == attempt
            await m.nack()
        assert await sub.pull(wait=0.3) == []
        [letter] = await client.messaging.read("orders-dlq")
        assert letter.data == {"bad": True} and letter.key == "o-1"
        assert letter.attributes["mezzo.dlq.topic"] == "orders"
        assert letter.attributes["mezzo.dlq.attempts"] == "2"
        assert await client.messaging.replay("orders-dlq") == 1
        [back] = await drain(sub, 1)
        assert back.data == {"bad": True} and "mezzo.dlq.topic" not in back.attributes
        assert await client.messaging.replay("orders-dlq") == 0  # each letter is replayed once


async def test_delayed_and_scheduled_delivery(mq: RunningNode) -> None:
    async with mq.client() as client:
        later = await client.messaging.publish("timers", "in an hour", delay="1h")
        assert later["scheduledAt"] and "offset" not in later
        at = datetime.now(UTC) + timedelta(milliseconds=200)
        await client.messaging.publish("timers", "soon", deliver_at=at)
        await client.messaging.publish("timers", "short", delay="50ms")
        sub = client.messaging.subscribe("timers", "g")
        got = await drain(sub, 2)
        assert sorted(m.data for m in got) == ["short", "soon"]
        assert await sub.pull(wait=0.2) == []  # the one-hour message is still waiting


async def test_ttl_drops_undelivered(mq: RunningNode) -> None:
    async with mq.client() as client:
        # TTL counts from when a message is due; due an hour ago with a 1 s TTL, it has expired
        await client.messaging.publish("ttl", "stale", ttl="1s", deliver_at=datetime.now(UTC) - timedelta(hours=1))
        await client.messaging.publish("ttl", "fresh", ttl="1h")
        got = await drain(client.messaging.subscribe("ttl", "g"), 1)
        assert [m.data for m in got] == ["fresh"]


async def test_filters(mq: RunningNode) -> None:
    async with mq.client() as client:
        await client.resources.apply({"apiVersion": "mezzo.dev/v1", "kind": "Subscription",
                                      "metadata": {"name": "eu-paid"},
                                      "spec": {"topic": "sales", "group": "eu",
                                               "filter": "tags has 'paid' and attributes.region == 'eu'"}})
        svc = mq.node.service(MessagingService)
        await wait_for(lambda: svc.subscriptions)
        await client.messaging.publish("sales", 1, tags=["paid"], attributes={"region": "eu"})
        await client.messaging.publish("sales", 2, tags=["paid"], attributes={"region": "us"})
        await client.messaging.publish("sales", 3, attributes={"region": "eu"})
        await client.messaging.publish("sales", 4, tags=["paid", "vip"], attributes={"region": "eu"})
        got = await drain(client.messaging.subscribe("sales", "eu"), 2)
        assert [m.data for m in got] == [1, 4]
        with pytest.raises(APIError) as info:
            await client.resources.apply({"apiVersion": "mezzo.dev/v1", "kind": "Subscription",
                                          "metadata": {"name": "bad"},
                                          "spec": {"topic": "sales", "group": "x", "filter": "tags has"}})
        assert info.value.errors[0]["field"] == "spec.filter"


async def test_seek_earliest_latest_and_time(mq: RunningNode) -> None:
    async with mq.client() as client:
        await client.messaging.publish_batch("log", [{"data": i} for i in range(3)])
        sub = client.messaging.subscribe("log", "g", batch=10)
        await sub.ack(await drain(sub, 3))
        await sub.seek("earliest")
        assert [m.data for m in await drain(sub, 3)] == [0, 1, 2]
        await sub.seek("latest")
        assert await sub.pull(wait=0.1) == []
        await sub.seek(1)
        assert [m.data for m in await drain(sub, 2)] == [1, 2]
        await sub.seek(datetime.now(UTC) + timedelta(hours=1))
        assert await sub.pull(wait=0.1) == []


async def test_size_limit_and_bad_input(mq: RunningNode) -> None:
    headers = {"Authorization": f"Bearer {mq.token}"}
    async with httpx.AsyncClient(base_url=mq.url, headers=headers) as http:
        big = await http.post("/v1/topics/big:publish", json={"data": "x" * (1024 * 1024 + 10)})
        assert big.status_code == 413, big.text
        assert big.headers["content-type"] == "application/problem+json"
        cases = {
            "/v1/topics/t:publish": {"json": {"data": 1, "dataBase64": "AA=="}},
            "/v1/topics/T!:publish": {"json": {"data": 1}},
            "/v1/topics/t2:publish#": {"json": {"messages": []}},
            "/v1/topics/t3:publish": {"json": {"data": 1, "delay": "soon"}},
            "/v1/topics/t4:publish": {"content": b"{", "headers": {"content-type": "application/json"}},
            "/v1/topics/t5:publish": {"content": b"{}", "headers": {"content-type": "application/cloudevents+json"}},
        }
        for path, kwargs in cases.items():
            response = await http.post(path.rstrip("#"), **kwargs)
            assert 400 <= response.status_code < 500, (path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
        missing = await http.post("/v1/topics/nope/groups/g:pull", json={})
        assert missing.status_code == 404
        stale = await http.post("/v1/topics/t6:publish", json={"data": 1})
        assert stale.status_code == 200
        stale_receipt = await http.post("/v1/topics/t6/groups/g:ack", json={"receipts": ["0:99:1:0"]})
        assert stale_receipt.status_code == 409  # well formed, not in flight
        bad_receipt = await http.post("/v1/topics/t6/groups/g:ack", json={"receipts": ["0:99:1:0", "junk"]})
        assert bad_receipt.status_code == 400 and bad_receipt.json()["errors"][0]["field"].startswith("receipts")


async def test_cloudevents_binary_and_structured(mq: RunningNode) -> None:
    headers = {"Authorization": f"Bearer {mq.token}"}
    async with httpx.AsyncClient(base_url=mq.url, headers=headers) as http:
        binary = await http.post("/v1/topics/ce:publish", content=b'{"a":1}', headers={
            "ce-specversion": "1.0", "ce-id": "evt-1", "ce-source": "/shop", "ce-type": "order.paid",
            "ce-partitionkey": "o-7", "content-type": "application/json"})
        assert binary.status_code == 200, binary.text
        structured = await http.post("/v1/topics/ce:publish", json={
            "specversion": "1.0", "id": "evt-2", "source": "/shop", "type": "order.shipped",
            "subject": "o-7", "data": {"b": 2}}, headers={"content-type": "application/cloudevents+json"})
        assert structured.status_code == 200, structured.text
        missing = await http.post("/v1/topics/ce:publish", json={"specversion": "1.0", "id": "x"},
                                  headers={"content-type": "application/cloudevents+json"})
        assert missing.status_code == 400 and missing.json()["errors"][0]["field"] == "source"
    async with mq.client() as client:
        got = await drain(client.messaging.subscribe("ce", "g"), 2)
        assert [(m.id, m.data, m.key) for m in got] == [("evt-1", {"a": 1}, "o-7"), ("evt-2", {"b": 2}, None)]
        assert got[0].attributes["ce.type"] == "order.paid" and got[1].attributes["ce.subject"] == "o-7"


async def test_dapr_publish(mq: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=mq.url) as http:
        ok = await http.post("/v1.0/publish/mezzo/dapr-orders", json={"status": "completed"},
                             headers={"dapr-api-token": mq.token})
        assert ok.status_code == 204
        plain = await http.post("/v1.0/publish/mezzo/dapr-orders", content=b"hi",
                                headers={"dapr-api-token": mq.token, "content-type": "text/plain"})
        assert plain.status_code == 204
        unknown = await http.post("/v1.0/publish/kafka/dapr-orders", json={}, headers={"dapr-api-token": mq.token})
        assert unknown.status_code == 404 and unknown.json()["errorCode"] == "ERR_PUBSUB_NOT_FOUND"
        assert (await http.post("/v1.0/publish/mezzo/dapr-orders", json={})).status_code == 401
    async with mq.client() as client:
        got = await drain(client.messaging.subscribe("dapr-orders", "g"), 2)
        assert [m.data for m in got] == [{"status": "completed"}, "hi"]


async def test_unknown_topic_without_auto_create_is_404(mq: RunningNode) -> None:
    async with mq.client() as client:
        with pytest.raises(NotFound):
            await client.messaging.subscribe("never-published", "g").pull()


async def test_state_survives_restart(mq: RunningNode) -> None:
    from mezzo.testing.fixtures import start_node

    async with mq.client() as client:
        await client.messaging.publish_batch("durable", [{"data": i} for i in range(4)])
        sub = client.messaging.subscribe("durable", "g", batch=2)
        await sub.ack(await drain(sub, 2))
        await client.messaging.publish("durable", "late", delay="150ms")
    await mq.node.stop()
    again = await start_node(mq.data_dir, broker=mq.node.settings.broker)
    try:
        async with again.client() as client:
            got = await drain(client.messaging.subscribe("durable", "g", batch=10), 3)
            assert [m.data for m in got] == [2, 3, "late"]
    finally:
        await again.node.stop()


async def test_metrics_and_trace_context(mq: RunningNode) -> None:
    parent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    headers = {"Authorization": f"Bearer {mq.token}", "traceparent": parent}
    async with httpx.AsyncClient(base_url=mq.url, headers=headers) as http:
        assert (await http.post("/v1/topics/metered:publish", json={"data": 1})).status_code == 200
    async with mq.client() as client:
        [m] = await drain(client.messaging.subscribe("metered", "g"), 1)
        assert m.attributes["traceparent"] == parent  # the consumer continues the publisher's trace
        text = (await client._http.get("/metrics")).text
    assert 'mezzo_messaging_published_total{group="",namespace="default",topic="metered"} 1.0' in text
    assert 'mezzo_messaging_in_flight_messages{group="g",namespace="default",topic="metered"} 1.0' in text
    assert 'mezzo_messaging_delivery_latency_seconds_count{group="g",namespace="default",topic="metered"} 1.0' in text


async def test_message_trace(mq: RunningNode) -> None:
    async with mq.client() as client:
        await client.resources.apply([
            {"apiVersion": "mezzo.dev/v1", "kind": "Topic", "metadata": {"name": "traced"}, "spec": {"trace": True}},
            {"apiVersion": "mezzo.dev/v1", "kind": "Subscription", "metadata": {"name": "traced-g"},
             "spec": {"topic": "traced", "group": "g", "maxDeliveries": 2, "backoff": {"initial": "1ms", "max": "1ms"}}},
        ])
        svc = mq.node.service(MessagingService)
        await wait_for(lambda: svc.topics.get("default/traced") and svc.subscriptions)
        await client.messaging.publish("traced", "x", id="m-1")
        sub = client.messaging.subscribe("traced", "g", consumer="worker-7")
        [first] = await drain(sub, 1)
        await first.nack()
        [second] = await drain(sub, 1)
        await second.nack()  # last attempt: dead-lettered
        events = await client.messaging.trace("m-1")
        assert [e["event"] for e in events] == ["published", "delivered", "nacked", "delivered", "dead-lettered"]
        assert events[1]["consumer"] == "worker-7" and events[3]["attempt"] == 2
        assert events[4]["deadLetterTopic"] == "traced.g.dlq"
        assert [t["name"] for t in await client.messaging.topics()] == ["traced", "traced.g.dlq"]
        with pytest.raises(NotFound):
            await client.messaging.trace("never-published")


async def test_groups_can_be_deleted_and_are_bounded(mq: RunningNode) -> None:
    async with mq.client() as client:
        await client.messaging.publish("g-topic", 1)
        sub = client.messaging.subscribe("g-topic", "old")
        await sub.ack(await drain(sub, 1))
        await client.messaging.delete_group("g-topic", "old")
        assert await client.messaging.groups("g-topic") == []
        assert [m.data for m in await drain(sub, 1)] == [1]  # a new group with that name starts over
        with pytest.raises(NotFound):
            await client.messaging.delete_group("g-topic", "never")
        mq.node.service(MessagingService).broker.max_groups = 1
        with pytest.raises(Conflict):
            await client.messaging.subscribe("g-topic", "second").pull()


async def test_dead_letter_topic_must_differ(mq: RunningNode) -> None:
    async with mq.client() as client:
        with pytest.raises(APIError) as info:
            await client.resources.apply({"apiVersion": "mezzo.dev/v1", "kind": "Subscription", "metadata": {"name": "loop"},
                                          "spec": {"topic": "a", "group": "g", "deadLetterTopic": "a"}})
        assert "deadLetterTopic must differ" in info.value.errors[0]["reason"]


async def test_partitions_never_shrink_and_keys_stay_put(mq: RunningNode) -> None:
    topic = {"apiVersion": "mezzo.dev/v1", "kind": "Topic", "metadata": {"name": "shrink"}, "spec": {"partitions": 4}}
    svc = mq.node.service(MessagingService)
    async with mq.client() as client:
        await client.resources.apply(topic)
        await wait_for(lambda: svc.topics.get("default/shrink"))
        before = await client.messaging.publish("shrink", 1, key="customer-9")
        first_spec = svc.topics["default/shrink"]
        topic["spec"]["partitions"] = 2
        await client.resources.apply(topic)
        await wait_for(lambda: svc.topics["default/shrink"] is not first_spec)  # the node has seen the change
        assert svc.topics["default/shrink"].partitions == 4
        after = await client.messaging.publish("shrink", 2, key="customer-9")
        assert after["partition"] == before["partition"]
        assert (await client.messaging.topics())[0]["partitions"] == 4


async def test_dead_letter_counts_only_real_deliveries(mq: RunningNode) -> None:
    async with mq.client() as client:
        await client.resources.apply({"apiVersion": "mezzo.dev/v1", "kind": "Subscription", "metadata": {"name": "once"},
                                      "spec": {"topic": "once", "group": "g", "maxDeliveries": 1, "ackTimeout": "50ms"}})
        svc = mq.node.service(MessagingService)
        await wait_for(lambda: svc.subscriptions)
        await client.messaging.publish("once", "x")
        sub = client.messaging.subscribe("once", "g")
        assert len(await drain(sub, 1)) == 1  # delivered once, never acked
        letters = await wait_for(lambda: _letters(client, "once.g.dlq"))
        assert letters[0].attributes["mezzo.dlq.attempts"] == "1"
        assert await client.messaging.replay("once.g.dlq") == 1
        listed = {t["name"]: t for t in await client.messaging.topics()}
        assert listed["once.g.dlq"]["groups"] == []  # the replay bookkeeping group is Mezzo's own


async def _letters(client, topic: str):  # type: ignore[no-untyped-def]
    sub = client.messaging.subscribe("once", "g")
    await sub.pull(wait=0.1)  # a pull notices the expired delivery and dead-letters it
    try:
        return await client.messaging.read(topic)
    except NotFound:
        return []


async def test_websocket_stream_with_acks(mq: RunningNode) -> None:
    import websockets

    async with mq.client() as client:
        await client.messaging.publish_batch("ws", [{"data": i} for i in range(5)])
        got = []
        async for message in client.messaging.stream("ws", "g", max_in_flight=2):
            got.append(message.data)
            if message.data != 4:
                await message.ack()
            if len(got) == 5:
                break
        assert got == [0, 1, 2, 3, 4]

        async def lag() -> int:
            return {g["group"]: g for g in await client.messaging.groups("ws")}["g"]["lag"]

        await wait_for(lambda: _equals(lag(), 1))  # four acks arrived over the socket; one left
    bad = mq.url.replace("http", "ws", 1) + "/v1/topics/ws/groups/g:connect"
    with pytest.raises(websockets.exceptions.InvalidStatus):
        async with websockets.connect(bad):
            pass


async def _equals(value, expected) -> bool:  # type: ignore[no-untyped-def]
    return await value == expected


async def test_retention_by_size_and_consumers_skip_ahead(mq: RunningNode) -> None:
    svc = mq.node.service(MessagingService)
    async with mq.client() as client:
        await client.resources.apply({"apiVersion": "mezzo.dev/v1", "kind": "Topic", "metadata": {"name": "kept"},
                                      "spec": {"segmentBytes": "4KiB", "retentionBytes": "8KiB"}})
        await wait_for(lambda: svc.topics.get("default/kept"))
        for _ in range(20):  # a segment rolls between appends, so publish in several requests
            await client.messaging.publish_batch("kept", [{"data": "x" * 500} for _ in range(5)])
        await svc.broker.enforce_retention(0)
        [stats] = await client.messaging.topics()
        assert stats["messages"] < 100 and stats["bytes"] <= 8 * 1024 + 4096  # old segments went
        got = await drain(client.messaging.subscribe("kept", "late"), stats["messages"])
        assert len(got) == stats["messages"] and got[0].offset > 0  # a new group starts at what is kept


async def test_ack_wakes_a_poller_waiting_behind_the_key(mq: RunningNode) -> None:
    import asyncio

    async with mq.client() as client:
        await client.messaging.publish_batch("keyed", [{"data": 1, "key": "k"}, {"data": 2, "key": "k"}])
        first = client.messaging.subscribe("keyed", "g")
        [one] = await drain(first, 1)
        waiting = asyncio.create_task(client.messaging.subscribe("keyed", "g").pull(wait=30))
        await asyncio.sleep(0.05)  # let the second consumer start its long poll
        await one.ack()
        [two] = await asyncio.wait_for(waiting, 25)  # delivered inside that same long poll
        assert two.data == 2
