"""Messaging bugs found in review: each test fails on the current code."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from mezzo.messaging.backend import Record, StaleReceiptError
from mezzo.messaging.backends.embedded import broker as broker_mod
from mezzo.messaging.backends.embedded.broker import EmbeddedBroker
from mezzo.messaging.model import TopicSpec
from mezzo.messaging.service import MessagingService
from mezzo.testing.fixtures import RunningNode, wait_for

T = "default/t"


async def _broker(path: Path, spec: TopicSpec | None = None) -> EmbeddedBroker:
    b = EmbeddedBroker(path)
    await b.open()
    await b.ensure_topic(T, spec or TopicSpec())
    return b


def _recs(n: int, key: str | None = None, prefix: str = "m") -> list[Record]:
    return [Record(f"{prefix}{i}", b"x", key, int(time.time() * 1000)) for i in range(n)]


# -- broker (embedded) -----------------------------------------------------------------


async def test_ack_with_huge_partition_in_receipt_allocates_nothing(tmp_path: Path) -> None:
    """GroupState._cursor grows the cursor list up to any partition number found in a
    receipt (broker.py ack/nack -> _cursor): one forged receipt '100000000:0:1' from any
    USE token allocates 10^8 cursors (OOM), and the next checkpoint writes them all."""
    b = await _broker(tmp_path)
    try:
        await b.publish(T, _recs(1), [0])
        with pytest.raises(StaleReceiptError):
            await b.ack(T, "g", ["100000:0:1"])
        with pytest.raises(StaleReceiptError):
            await b.nack(T, "g", ["100000:0:1"], 0)
        assert len(b._topics[T].groups["g"].cursors) == 1
    finally:
        await b.close()


async def test_dedup_window_expires_on_a_quiet_topic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """publish() checks ``state.seen`` without looking at the entry's age; old ids are only
    evicted by remember(), i.e. by the *next new* publish. On a quiet topic an id stays a
    'duplicate' forever: a re-publish after the window answers duplicate=true and the
    message is never stored (acknowledged, then lost)."""
    clock = [1_000_000.0]
    monkeypatch.setattr(broker_mod.time, "time", lambda: clock[0])
    b = await _broker(tmp_path, TopicSpec(dedup_window=1.0))
    try:
        [first] = await b.publish(T, [Record("pay-1", b"x", None, 0)], [0])
        clock[0] += 3600  # an hour later: far outside the 1 s window
        [again] = await b.publish(T, [Record("pay-1", b"x", None, 0)], [0])
        assert not again.duplicate and again.offset == first.offset + 1
    finally:
        await b.close()


async def test_concurrent_checkpoints_do_not_fail_acks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GroupState.record() starts a checkpoint while ``_since_checkpoint`` >= CHECKPOINT_EVERY
    but only resets the counter after the (threaded) write finishes, so every record()
    finishing meanwhile starts another checkpoint; they share ``checkpoint.tmp`` and race:
    os.replace fails (FileNotFoundError) and the durable ack is reported as a 500."""
    monkeypatch.setattr(broker_mod, "CHECKPOINT_EVERY", 1)
    b = await _broker(tmp_path)
    try:
        await b.publish(T, _recs(400), [0] * 400)
        got = await b.fetch(T, "g", 400, 0, 30)
        results = await asyncio.gather(*(b.ack(T, "g", [d.receipt]) for d in got), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors[:3]
    finally:
        await b.close()


async def test_journal_replay_does_not_leak_attempts_of_acked_offsets(tmp_path: Path) -> None:
    """Replaying 'D' entries fills cursor.attempts; 'A' (mark_done) never removes them and load()
    skips offsets below committed before popping them. Every restart adds every delivered
    offset since the last checkpoint to ``attempts``, and checkpoint() persists them forever."""
    b = await _broker(tmp_path)
    await b.publish(T, _recs(50), [0] * 50)
    got = await b.fetch(T, "g", 50, 0, 30)
    await b.ack(T, "g", [d.receipt for d in got])
    # crash: no close(), so no checkpoint; reopen from the journal
    again = EmbeddedBroker(tmp_path)
    await again.open()
    try:
        cursor = again._topics[T].groups["g"].cursors[0]
        assert cursor.committed == 50
        assert cursor.attempts == {}, f"{len(cursor.attempts)} attempt counts kept for acked offsets"
    finally:
        await again.close()
        await b.close()


async def test_long_poll_does_not_busy_loop_while_a_key_is_in_flight(tmp_path: Path) -> None:
    """fetch() sleeps until min(next_wakeup()); next_wakeup() returns ``visible_at`` (0.0) for an
    entry that is merely waiting behind its key, so the long poll spins every 1 ms, re-running
    the O(pending) _take each time, for the whole ``wait``."""
    b = await _broker(tmp_path)
    calls = 0
    real = b._take

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    try:
        await b.publish(T, _recs(2, key="k"), [0, 0])
        assert len(await b.fetch(T, "g", 10, 0, 30)) == 1  # k's first message in flight
        b._take = counting  # type: ignore[method-assign]
        assert await b.fetch(T, "g", 10, 0.3, 30) == []  # the second one waits behind it
        assert calls < 10, f"_take ran {calls} times during one 0.3 s long poll"
    finally:
        await b.close()


async def test_receipt_from_before_a_seek_cannot_ack_the_replayed_delivery(tmp_path: Path) -> None:
    """seek() clears ``attempts``, so the replayed delivery gets attempt 1 again and the same
    receipt 'p:o:1' as the pre-seek one: a slow consumer's late ack of the old delivery acks
    the replay that another consumer is just processing (or has not seen)."""
    b = await _broker(tmp_path)
    try:
        await b.publish(T, _recs(1), [0])
        [old] = await b.fetch(T, "g", 1, 0, 30)
        await b.seek(T, "g", {0: 0})
        [new] = await b.fetch(T, "g", 1, 0, 30)
        with pytest.raises(StaleReceiptError):
            await b.ack(T, "g", [old.receipt])
        await b.ack(T, "g", [new.receipt])
    finally:
        await b.close()


# -- service / HTTP ------------------------------------------------------------------------


async def test_nack_of_a_stale_last_attempt_receipt_dead_letters_nothing(node: RunningNode) -> None:
    """service.nack() dead-letters every receipt whose attempt number >= maxDeliveries before the
    broker checks it is in flight: a stale or forged receipt '0:0:99:0' copies an acked (or
    never delivered) message into the DLQ, then answers 409."""
    headers = {"Authorization": f"Bearer {node.token}"}
    async with httpx.AsyncClient(base_url=node.url, headers=headers) as http:
        assert (await http.post("/v1/topics/t:publish", json={"data": 1})).status_code == 200
        r = await http.post("/v1/topics/t/groups/g:nack", json={"receipts": ["0:0:99:0"]})
        assert r.status_code == 409
        broker = node.node.service(MessagingService).broker
        assert not broker.has_topic("default/t.g.dlq") or (await broker.topic_stats("default/t.g.dlq")).messages == 0


@pytest.mark.parametrize("receipt", ["x:0:99", "7:0:99"])
async def test_nack_with_bad_last_attempt_receipt_is_4xx(node: RunningNode, receipt: str) -> None:
    """service.nack() parses exhausted receipts with int() and reads partition ``p`` without
    checks: ValueError / LookupError escape as 500."""
    headers = {"Authorization": f"Bearer {node.token}"}
    async with httpx.AsyncClient(base_url=node.url, headers=headers) as http:
        assert (await http.post("/v1/topics/t:publish", json={"data": 1})).status_code == 200
        r = await http.post("/v1/topics/t/groups/g:nack", json={"receipts": [receipt]})
        assert 400 <= r.status_code < 500, r.text


@pytest.mark.parametrize("kwargs", [
    {"content": b'{"specversion":"1.0","id":"' + b"x" * 300 + b'","source":"s","type":"t"}',
     "headers": {"content-type": "application/cloudevents+json"}},
    {"content": b'{"specversion":"1.0","id":"a","source":"s","type":"t","partitionkey":5}',
     "headers": {"content-type": "application/cloudevents+json"}},
    {"content": b"x", "headers": {"ce-specversion": "1.0", "ce-id": "i", "ce-source": "s", "ce-type": "t",
                                  "ce-partitionkey": "k" * 600}},
], ids=["structured-long-id", "structured-int-key", "binary-long-key"])
async def test_invalid_cloudevent_fields_are_400(node: RunningNode, kwargs: dict) -> None:  # type: ignore[type-arg]
    """from_structured/from_binary call PublishMessage.model_validate; its ValidationError is not
    a CloudEventError and read_messages() does not catch it: 500 instead of 400."""
    headers = {"Authorization": f"Bearer {node.token}"}
    async with httpx.AsyncClient(base_url=node.url, headers=headers) as http:
        r = await http.post("/v1/topics/ce:publish", **kwargs)
        assert r.status_code == 400, r.text


@pytest.mark.parametrize("ttl", ["nan", "inf"])
async def test_dapr_non_finite_ttl_is_400(node: RunningNode, ttl: str) -> None:
    """dapr.py float(ttl) accepts nan/inf; 'nan <= 0' is False, so publish fails later in int()
    and the route answers 500 ERR_PUBSUB_PUBLISH_MESSAGE for bad input."""
    async with httpx.AsyncClient(base_url=node.url) as http:
        r = await http.post(f"/v1.0/publish/mezzo/t?metadata.ttlInSeconds={ttl}", content=b"x",
                            headers={"dapr-api-token": node.token})
        assert r.status_code == 400, r.text


async def test_replaying_a_groups_dead_letter_does_not_redeliver_to_other_groups(node: RunningNode) -> None:
    """replay_dead_letters() republishes the letter to the origin *topic*, so every group of the
    topic gets it again, including groups that had already acked it; the letter records its
    group (mezzo.dlq.group) but replay ignores it."""
    async with node.client() as client:
        await client.resources.apply({"apiVersion": "mezzo.dev/v1", "kind": "Subscription",
                                      "metadata": {"name": "b"},
                                      "spec": {"topic": "orders", "group": "billing", "maxDeliveries": 1}})
        svc = node.node.service(MessagingService)
        await wait_for(lambda: svc.subscriptions)
        await client.messaging.publish("orders", "o-1")
        shipping = client.messaging.subscribe("orders", "shipping")
        billing = client.messaging.subscribe("orders", "billing")
        [s] = await shipping.pull(wait=2)
        await s.ack()  # shipping is done with it
        [m] = await billing.pull(wait=2)
        await m.nack()  # billing's last attempt: dead-lettered
        assert await client.messaging.replay("orders.billing.dlq") == 1
        assert len(await billing.pull(wait=2)) == 1
        assert await shipping.pull(wait=0.3) == [], "shipping got billing's dead letter again"


async def test_subscription_moved_to_another_group_forgets_the_old_group(node: RunningNode) -> None:
    """module._on_subscription keys settings by the *new* spec's (topic, group) and never removes
    the old key: after a Subscription is changed to another group, pulls of the old group keep
    its filter (silently acking non-matching messages), maxDeliveries and DLQ forever."""
    svc = node.node.service(MessagingService)
    async with node.client() as client:
        doc = {"apiVersion": "mezzo.dev/v1", "kind": "Subscription", "metadata": {"name": "s"},
               "spec": {"topic": "orders", "group": "g1", "filter": "tags has 'x'"}}
        await client.resources.apply(doc)
        await wait_for(lambda: ("default/orders", "g1") in svc.subscriptions)
        await client.resources.apply({"apiVersion": "mezzo.dev/v1", "kind": "Subscription",
                                      "metadata": {"name": "s"}, "spec": {"topic": "orders", "group": "g2"}})
        await wait_for(lambda: ("default/orders", "g2") in svc.subscriptions)
        assert ("default/orders", "g1") not in svc.subscriptions, list(svc.subscriptions)


async def test_topic_visible_to_publish_only_once_the_broker_has_it(tmp_path: Path, sqlite_store) -> None:  # type: ignore[no-untyped-def]
    """The flaky test_per_key_order_one_in_flight: MessagingService.topic_changed() stores the spec
    in ``self.topics`` *before* awaiting broker.ensure_topic() (which opens partition logs in
    threads). _topic() trusts self.topics, so a publish in that window reaches the broker for a
    topic it does not have yet: LookupError -> HTTP 500. Here ensure_topic is made slow."""
    b = EmbeddedBroker(tmp_path / "broker")
    await b.open()
    real = b.ensure_topic
    gate = asyncio.Event()

    async def slow_ensure(topic: str, spec: TopicSpec) -> None:
        await gate.wait()  # stands in for the thread hops of PartitionLog.open under load
        await real(topic, spec)

    b.ensure_topic = slow_ensure  # type: ignore[method-assign]
    svc = MessagingService(b, sqlite_store)
    applying = asyncio.create_task(svc.topic_changed("default", "events", TopicSpec(partitions=4)))
    asyncio.get_running_loop().call_later(0.2, gate.set)
    try:
        await wait_for(lambda: svc.topics.get("default/events"))  # what the conformance test waits for
        from mezzo.messaging.service import PublishMessage

        [result] = await svc.publish("default", "events", [PublishMessage(data=1, key="a")], None)
        assert result.offset == 0
    finally:
        gate.set()
        await applying
        await b.close()
