"""Dapr's Python SDK (``dapr.clients.DaprClient``, unchanged) against Mezzo's Dapr gRPC port: publish,
bulk publish, streaming subscriptions (ack, retry, drop), metadata, tokens and errors as Dapr answers
them, the health endpoint the SDK waits on, and the listener's life with the node (settings, a taken
port, shutdown with open streams, ``mezzo up`` under uvloop).

The SDK is synchronous and the in-process node serves from this event loop: every SDK call runs in a
thread. Every test has topics of its own; nodes listen on free ports (never Dapr's 50001)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import orjson
import pytest
from dapr.clients import BulkPublishEntry, DaprClient
from dapr.clients.grpc._response import TopicEventResponse
from dapr.proto import api_service_v1, api_v1

from mezzo.messaging.codec import split_envelope
from mezzo.messaging.service import MessagingService, PublishMessage
from mezzo.testing import backends
from mezzo.testing.fixtures import (
    RunningNode,
    free_port,
    spawn_node,
    start_node,
    stop_process,
    wait_for,
)

TRACEPARENT = "00-" + "6" * 32 + "-" + "7" * 16 + "-01"
REQUIRE_BACKENDS = os.environ.get("MEZZO_REQUIRE_BACKENDS") == "1"


def grpc_address(node: RunningNode) -> str:
    url = node.node.url("dapr-grpc")
    assert url is not None, "the node serves no Dapr gRPC port"
    return url.removeprefix("grpc://")


def point_sdk(monkeypatch: pytest.MonkeyPatch, http_url: str, grpc_addr: str, token: str | None) -> None:
    """The settings a user sets for the SDK: where Mezzo's API (the health check) and gRPC port are, the token."""
    for name in ("DAPR_HTTP_PORT", "DAPR_GRPC_PORT", "DAPR_RUNTIME_HOST", "DAPR_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAPR_HTTP_ENDPOINT", http_url)
    monkeypatch.setenv("DAPR_GRPC_ENDPOINT", grpc_addr)
    monkeypatch.setenv("DAPR_HEALTH_TIMEOUT", "20")
    if token is not None:
        monkeypatch.setenv("DAPR_API_TOKEN", token)


@pytest.fixture
def sdk(node: RunningNode, monkeypatch: pytest.MonkeyPatch) -> RunningNode:
    point_sdk(monkeypatch, node.url, grpc_address(node), node.token)
    return node


@pytest.fixture
def topic() -> str:
    return f"dapr-{uuid.uuid4().hex[:10]}"


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def new_client() -> DaprClient:
    """``DaprClient()`` with no arguments: it reads the DAPR_* settings and waits for /v1.0/healthz/outbound."""
    return await in_thread(DaprClient)


async def next_message(sub: Any, timeout: float = 30.0) -> Any:
    return await asyncio.wait_for(in_thread(sub.next_message), timeout)


async def rpc_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The error a call raises (DaprGrpcError for the SDK's calls)."""
    with pytest.raises(grpc.RpcError) as info:
        await in_thread(fn, *args, **kwargs)
    return info.value


async def pulled(node: RunningNode, topic: str, count: int, namespace: str = "default") -> list[Any]:
    """``count`` deliveries of the topic to a group of the test, with their envelope headers."""
    service = node.node.service(MessagingService)
    got: list[Any] = []

    async def more() -> bool:
        for delivery, _ in await service.pull_deliveries(namespace, topic, "check", count - len(got), 0.2):
            head, data = split_envelope(delivery.payload)
            got.append((orjson.loads(head), data))
            await service.ack(namespace, topic, "check", [delivery.receipt])
        return len(got) >= count

    await wait_for(more)
    return got


async def group_of(node: RunningNode, topic: str, group: str) -> dict[str, Any] | None:
    async with node.client() as client:
        return {g["group"]: g for g in await client.messaging.groups(topic)}.get(group)


# publishing -----------------------------------------------------------------------------------------


async def test_publish_json_text_and_cloudevents_with_ttl_key_namespace_and_trace(sdk: RunningNode, topic: str) -> None:
    client = await new_client()
    try:
        await in_thread(client.publish_event, "mezzo", topic, orjson.dumps({"order": 1}),
                        data_content_type="application/json", publish_metadata={"ttlInSeconds": "90"})
        await in_thread(client.publish_event, "mezzo", topic, "plain text")  # no content type: Dapr's text/plain
        event = {"id": "ce-1", "data": {"n": 2}, "partitionkey": "k-ce"}  # no source, type, specversion: Dapr's
        await in_thread(client.publish_event, "mezzo", topic, orjson.dumps(event),
                        data_content_type="application/cloudevents+json")
        with warnings.catch_warnings():  # the SDK's deprecated gRPC metadata argument is how it sends a traceparent
            warnings.simplefilter("ignore", DeprecationWarning)
            await in_thread(client.publish_event, "mezzo", topic, b"\x00\x01", data_content_type="application/x-raw",
                            publish_metadata={"partitionKey": "customer-7"}, metadata=(("traceparent", TRACEPARENT),))
        await in_thread(client.publish_event, "mezzo", topic, "elsewhere", publish_metadata={"namespace": "shop"})
    finally:
        client.close()
    (j, jdata), (t, tdata), (c, cdata), (r, rdata) = await pulled(sdk, topic, 4)
    assert (j["ct"], orjson.loads(jdata), j["exp"] - j["pub"]) == ("application/json", {"order": 1}, 90_000)
    assert (t["ct"], tdata, "exp" in t) == ("text/plain", b"plain text", False)
    assert (c["id"], c["key"], orjson.loads(cdata)) == ("ce-1", "k-ce", {"n": 2})
    assert (c["attrs"]["ce.source"], c["attrs"]["ce.type"]) == ("Dapr", "com.dapr.event.sent")
    assert (r["ct"], rdata, r["key"], r["attrs"]["traceparent"]) == ("application/x-raw", b"\x00\x01", "customer-7",
                                                                     TRACEPARENT)
    [(_, data)] = await pulled(sdk, topic, 1, namespace="shop")
    assert data == b"elsewhere"


async def test_bad_input_is_invalid_argument_with_daprs_reasons(sdk: RunningNode, topic: str) -> None:
    client = await new_client()
    try:
        cases = [
            (("nope", topic, "x"), {}, "DAPR_PUBSUB_NOT_FOUND", "pubsub nope not found"),
            (("", topic, "x"), {}, "DAPR_PUBSUB_NAME_EMPTY", "pubsub name is empty"),
            (("mezzo", "Not A Topic", "x"), {}, "DAPR_PUBSUB_TOPIC_NAME_EMPTY", "invalid topic name"),
            (("mezzo", topic, "x"), {"publish_metadata": {"namespace": "No!"}}, "DAPR_PUBSUB_TOPIC_NAME_EMPTY",
             "metadata.namespace"),
            (("mezzo", topic, "x"), {"publish_metadata": {"ttlInSeconds": "nan"}}, "DAPR_PUBSUB_CLOUD_EVENT_CREATION",
             "ttlInSeconds"),
            (("mezzo", topic, "[1]"), {"data_content_type": "application/cloudevents+json"},
             "DAPR_PUBSUB_CLOUD_EVENT_CREATION", "a CloudEvent is a JSON object"),
        ]
        for args, kwargs, reason, words in cases:
            err = await rpc_error(client.publish_event, *args, **kwargs)
            assert (err.code(), err.error_code()) == (grpc.StatusCode.INVALID_ARGUMENT, reason), (args, kwargs)
            assert words in err.details()
        too_big = await rpc_error(client.publish_event, "mezzo", topic, b"x" * (1024 * 1024 + 1))
        assert (too_big.code(), too_big.error_code()) == (grpc.StatusCode.INTERNAL, "DAPR_PUBSUB_PUBLISH_MESSAGE")
        assert "bytes" in too_big.details()
        other = await rpc_error(client.get_state, "statestore", "key")
        assert other.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "PublishEvent" in other.details() and "GetState" in other.details()
        await in_thread(client.publish_event, "mezzo", topic, "valid")
    finally:
        client.close()
    [(_, data)] = await pulled(sdk, topic, 1)  # what was refused was not stored
    assert data == b"valid"
    assert await sdk.node.service(MessagingService).pull_deliveries("default", topic, "check", 10, 0.0) == []


async def test_bulk_publish_lists_the_entries_it_refused_and_publishes_the_others(sdk: RunningNode, topic: str) -> None:
    client = await new_client()
    try:
        entries = [
            BulkPublishEntry(event='{"n": 1}', content_type="application/json", entry_id="e1"),
            BulkPublishEntry(event="[1]", content_type="application/cloudevents+json", entry_id="bad-event"),
            BulkPublishEntry(event=b"x" * (1024 * 1024 + 1), entry_id="too-big"),
            BulkPublishEntry(event="two", entry_id="e2", metadata={"partitionKey": "k2"}),
        ]
        response = await in_thread(client.publish_events, "mezzo", topic, entries, publish_metadata={"ttlInSeconds": "60"})
        failed = {f.entry_id: f.error for f in response.failed_entries}
        assert set(failed) == {"bad-event", "too-big"}, failed
        assert "CloudEvent" in failed["bad-event"] and "bytes" in failed["too-big"]
        plain = await in_thread(client.publish_events, "mezzo", topic, ["a", "b"])
        assert plain.failed_entries == []
        unknown = await rpc_error(client.publish_events, "kafka", topic, ["a"])
        assert (unknown.code(), unknown.error_code()) == (grpc.StatusCode.INVALID_ARGUMENT, "DAPR_PUBSUB_NOT_FOUND")
    finally:
        client.close()
    got = await pulled(sdk, topic, 4)
    assert [(h.get("key"), d, h["exp"] - h["pub"] if "exp" in h else None) for h, d in got] == [
        (None, b'{"n": 1}', 60_000), ("k2", b"two", 60_000), (None, b"a", None), (None, b"b", None)]


async def test_raw_payload_keeps_a_cloudevent_body_as_sent(sdk: RunningNode, topic: str) -> None:
    client = await new_client()
    try:
        await in_thread(client.publish_event, "mezzo", topic, b'{"not": "checked"', publish_metadata={"rawPayload": "true"},
                        data_content_type="application/cloudevents+json")  # as Dapr: published as is, not parsed
        bad = await rpc_error(client.publish_event, "mezzo", topic, "x", publish_metadata={"rawPayload": "yes"})
        assert (bad.code(), bad.error_code()) == (grpc.StatusCode.INVALID_ARGUMENT, "DAPR_PUBSUB_METADATA_DESERIALIZATION")
        whole = await rpc_error(client.publish_events, "mezzo", topic, ["a"], publish_metadata={"rawPayload": "maybe"})
        assert whole.error_code() == "DAPR_PUBSUB_METADATA_DESERIALIZATION"  # the request's: refused whole, as Dapr
    finally:
        client.close()
    [(head, data)] = await pulled(sdk, topic, 1)
    assert (head["ct"], data) == ("application/cloudevents+json", b'{"not": "checked"')


async def test_bulk_publish_fails_the_call_when_the_broker_fails(sdk: RunningNode, topic: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Not an OK answer listing every entry in failedEntries: Dapr answers INTERNAL, and SDK users rely on it."""

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("the broker is unreachable")

    monkeypatch.setattr(sdk.node.service(MessagingService), "publish", unreachable)
    client = await new_client()
    try:
        err = await rpc_error(client.publish_events, "mezzo", topic, ["a", "b"])
        assert (err.code(), err.error_code()) == (grpc.StatusCode.INTERNAL, "DAPR_PUBSUB_PUBLISH_MESSAGE")
        assert "unreachable" in err.details()
    finally:
        client.close()


# tokens ---------------------------------------------------------------------------------------------


async def test_tokens_are_checked_as_on_the_api_port(node: RunningNode, topic: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    async with node.client() as mezzo:
        scoped = (await mezzo.tokens.create("shop-app", "developer", ["shop"]))["token"]
        viewer = (await mezzo.tokens.create("watcher", "viewer"))["token"]
    address = grpc_address(node)
    for token, code, reason in [(None, grpc.StatusCode.UNAUTHENTICATED, "missing API token"),
                                ("mzo_wrong_" + "x" * 32, grpc.StatusCode.UNAUTHENTICATED, "invalid"),
                                (scoped, grpc.StatusCode.PERMISSION_DENIED, "not allowed"),
                                (viewer, grpc.StatusCode.PERMISSION_DENIED, "not allowed")]:
        point_sdk(monkeypatch, node.url, address, token)
        client = await new_client()  # the health endpoint needs no token, as Dapr's
        try:
            err = await rpc_error(client.publish_event, "mezzo", topic, "x")
            assert err.code() == code and reason in err.details(), (token, err.details())
            other = await rpc_error(client.get_state, "statestore", "key")  # the token first, on every method
            expected = code if code == grpc.StatusCode.UNAUTHENTICATED else grpc.StatusCode.UNIMPLEMENTED
            assert other.code() == expected, (token, other.details())
            with pytest.raises(Exception, match=code.name):
                await in_thread(client.subscribe, "mezzo", topic)
        finally:
            client.close()
    point_sdk(monkeypatch, node.url, address, scoped)
    client = await new_client()
    try:  # the scoped token may publish to its namespace
        await in_thread(client.publish_event, "mezzo", topic, "ok", publish_metadata={"namespace": "shop"})
    finally:
        client.close()
    [(_, data)] = await pulled(node, topic, 1, namespace="shop")
    assert data == b"ok"


async def test_dapr_health_endpoints_answer_204_without_a_token(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        for path in ("/v1.0/healthz", "/v1.0/healthz/outbound"):
            r = await http.get(path)
            assert r.status_code == 204, (path, r.text)


# streaming subscriptions ----------------------------------------------------------------------------


async def test_stream_acks_retries_and_drops_to_the_dead_letter_topic(sdk: RunningNode, topic: str) -> None:
    client = await new_client()
    sub = await in_thread(client.subscribe, "mezzo", topic, dead_letter_topic=f"{topic}-dead")
    try:
        for n in range(3):
            await in_thread(client.publish_event, "mezzo", topic, orjson.dumps({"n": n}),
                            data_content_type="application/json")
        first = await next_message(sub)
        assert (first.data(), first.topic(), first.pubsub_name(), first.data_content_type()) == (
            {"n": 0}, topic, "mezzo", "application/json")
        assert (first.spec_version(), first.type(), first.source()) == ("1.0", "mezzo.message",
                                                                         f"mezzo/default/{topic}")
        sub.respond_success(first)
        second = await next_message(sub)  # the three are in flight at once (the group's maxInFlight is 16)
        third = await next_message(sub)
        assert (second.data(), third.data()) == ({"n": 1}, {"n": 2})
        sub.respond_retry(second)  # delivered again after the group's backoff
        sub.respond_drop(third)  # to the dead-letter topic the subscription named
        again = await next_message(sub)
        assert (again.id(), again.data()) == (second.id(), {"n": 1})
        sub.respond_success(again)
        group = "admin"  # the token's name, as Dapr's default group is the app id
        await wait_for(lambda: _settled(sdk, topic, group))
    finally:
        await in_thread(sub.close)
        client.close()
    async with sdk.client() as mezzo:
        [letter] = await mezzo.messaging.read(f"{topic}-dead")
    assert letter.data == {"n": 2} and letter.attributes["mezzo.dlq.reason"] == "dropped by the subscriber"
    assert letter.attributes["mezzo.dlq.group"] == group
    service = sdk.node.service(MessagingService)
    assert (f"default/{topic}", group) not in service.subscriptions  # the stream's dead-letter topic went with it


async def _settled(node: RunningNode, topic: str, group: str) -> bool:
    found = await group_of(node, topic, group)
    return found is not None and found["lag"] == 0 and found["inFlight"] == 0


async def test_drop_without_a_dead_letter_topic_drops_and_groups_come_from_consumer_id(
        sdk: RunningNode, topic: str) -> None:
    client = await new_client()
    billing = await in_thread(client.subscribe, "mezzo", topic, metadata={"consumerID": "billing"})
    shipping = await in_thread(client.subscribe, "mezzo", topic, metadata={"consumerID": "shipping"})
    try:
        await in_thread(client.publish_event, "mezzo", topic, "parcel")
        got = await next_message(billing)
        assert got.data() == "parcel"
        billing.respond_drop(got)
        other = await next_message(shipping)  # another group: it gets every message too
        assert other.data() == "parcel"
        shipping.respond_success(other)
        await wait_for(lambda: _settled(sdk, topic, "billing"))
        await wait_for(lambda: _settled(sdk, topic, "shipping"))
        metadata = await in_thread(client.get_metadata)
        assert metadata.application_id == "admin"
        assert [c.name for c in metadata.registered_components] == ["mezzo"]
    finally:
        await in_thread(billing.close)
        await in_thread(shipping.close)
        client.close()
    async with sdk.client() as mezzo:
        topics = {t["name"] for t in await mezzo.messaging.topics()}
    assert f"{topic}.billing.dlq" not in topics  # dropped, not dead-lettered: no dead-letter topic was named


async def test_subscribe_with_handler_and_a_bad_group_name(sdk: RunningNode, topic: str) -> None:
    client = await new_client()
    seen: list[Any] = []

    def handler(message: Any) -> TopicEventResponse:
        seen.append(message.data())
        return TopicEventResponse("success")

    close = await in_thread(client.subscribe_with_handler, "mezzo", topic, handler)
    try:
        for n in range(5):
            await in_thread(client.publish_event, "mezzo", topic, f"m{n}")
        await wait_for(lambda: len(seen) == 5)
        assert seen == [f"m{n}" for n in range(5)]
        await wait_for(lambda: _settled(sdk, topic, "admin"))
        with pytest.raises(Exception, match="INVALID_ARGUMENT"):
            await in_thread(client.subscribe, "mezzo", topic, metadata={"consumerID": "Not A Group"})
    finally:
        await in_thread(close)
        client.close()


async def test_a_closed_stream_gives_back_what_it_did_not_answer(sdk: RunningNode, topic: str) -> None:
    client = await new_client()
    sub = await in_thread(client.subscribe, "mezzo", topic)
    try:
        await in_thread(client.publish_event, "mezzo", topic, "unanswered")
        message = await next_message(sub)
        await in_thread(sub.close)  # no answer: the delivery goes back to the group at once
        again = await in_thread(client.subscribe, "mezzo", topic)
        try:
            redelivered = await next_message(again)
            assert (redelivered.id(), redelivered.data()) == (message.id(), "unanswered")
            again.respond_success(redelivered)
            await wait_for(lambda: _settled(sdk, topic, "admin"))
        finally:
            await in_thread(again.close)
    finally:
        client.close()


async def open_stream(node: RunningNode, channel: grpc.aio.Channel, topic: str) -> Any:
    """A raw streaming subscription, past its initial response."""
    stub = api_service_v1.DaprStub(channel)
    call = stub.SubscribeTopicEventsAlpha1(metadata=(("dapr-api-token", node.token),))
    await call.write(api_v1.SubscribeTopicEventsRequestAlpha1(
        initial_request=api_v1.SubscribeTopicEventsRequestInitialAlpha1(pubsub_name="mezzo", topic=topic)))
    first = await call.read()
    assert first.WhichOneof("subscribe_topic_events_response_type") == "initial_response"
    return call


async def test_a_client_gone_while_writes_wait_gives_back_the_unsent_messages_at_once(node: RunningNode,
                                                                                       topic: str) -> None:
    """A slow client: the batch pulled (16, the group's maxInFlight) is larger than what gRPC buffers, so
    writes wait; when the client leaves, the messages not yet written go back at once too, not after
    the group's ack timeout (30 s)."""
    service = node.node.service(MessagingService)
    count = 16
    await service.publish("default", topic, [
        PublishMessage(dataBase64=base64.b64encode(bytes([65 + n]) * 1_000_000).decode()) for n in range(count)],
        "admin")
    channel = grpc.aio.insecure_channel(grpc_address(node))
    try:
        call = await open_stream(node, channel, topic)
        await call.read()  # one message read, the rest left waiting
        await asyncio.sleep(0.5)
        call.cancel()
    finally:
        await channel.close()
    got: list[Any] = []

    async def back() -> bool:
        got.extend(await service.pull_deliveries("default", topic, "admin", count, 0.2))
        return len(got) >= count

    await wait_for(back, timeout=10)
    assert len({d.receipt for d, _ in got}) == count


async def test_a_stream_that_fails_to_give_back_is_still_closed(node: RunningNode, topic: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Giving back what was in flight failed: the stream still leaves the open ones (metadata, shutdown)."""
    service = node.node.service(MessagingService)

    async def failing(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("nack failed")

    monkeypatch.setattr(service, "nack", failing)
    await service.publish("default", topic, [PublishMessage(data="x")], "admin")
    listener = next(x for x in node.node.listeners if x.name == "dapr-grpc")
    channel = grpc.aio.insecure_channel(grpc_address(node))
    try:
        call = await open_stream(node, channel, topic)
        await call.read()
        assert len(listener.api.streams.open) == 1
        call.cancel()
    finally:
        await channel.close()
    await wait_for(lambda: not listener.api.streams.open, timeout=10)


# the listener and the node --------------------------------------------------------------------------


async def test_node_stop_ends_open_streams_with_unavailable(tmp_path: Path, topic: str) -> None:
    running = await start_node(tmp_path / "data")
    channel = grpc.aio.insecure_channel(grpc_address(running))
    try:
        stub = api_service_v1.DaprStub(channel)
        call = stub.SubscribeTopicEventsAlpha1(metadata=(("dapr-api-token", running.token),))
        await call.write(api_v1.SubscribeTopicEventsRequestAlpha1(
            initial_request=api_v1.SubscribeTopicEventsRequestInitialAlpha1(pubsub_name="mezzo", topic=topic)))
        first = await call.read()
        assert first.WhichOneof("subscribe_topic_events_response_type") == "initial_response"
        await running.node.stop()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.read()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE and "stopping" in (ended.value.details() or "")
    finally:
        await channel.close()
        await running.node.stop()


async def test_a_revoked_token_ends_its_stream_and_metadata_lists_open_streams(node: RunningNode, topic: str) -> None:
    async with node.client() as mezzo:
        created = await mezzo.tokens.create("Orders@Shop", "developer")
    channel = grpc.aio.insecure_channel(grpc_address(node))
    try:
        stub = api_service_v1.DaprStub(channel)
        auth = (("dapr-api-token", created["token"]),)
        call = stub.SubscribeTopicEventsAlpha1(metadata=auth)
        await call.write(api_v1.SubscribeTopicEventsRequestAlpha1(
            initial_request=api_v1.SubscribeTopicEventsRequestInitialAlpha1(
                pubsub_name="mezzo", topic=topic, dead_letter_topic=f"{topic}-dead", metadata={"k": "v"})))
        await call.read()  # the initial response
        metadata = await stub.GetMetadata(api_v1.GetMetadataRequest(), metadata=auth)
        assert metadata.id == "Orders@Shop"
        [open_one] = metadata.subscriptions
        assert (open_one.topic, open_one.dead_letter_topic, dict(open_one.metadata)) == (topic, f"{topic}-dead",
                                                                                          {"k": "v"})
        assert await group_of(node, topic, "orders-shop") is not None  # the token's name as a group name
        async with node.client() as mezzo:
            await mezzo.tokens.revoke(created["id"])
        with pytest.raises(grpc.aio.AioRpcError) as ended:  # within a heartbeat (5 s) of the revocation
            await asyncio.wait_for(call.read(), 30)
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await channel.close()


async def test_listener_is_configurable_off_and_a_taken_port_stops_the_start(tmp_path: Path) -> None:
    off = await start_node(tmp_path / "off", dapr_grpc_port=None)
    try:
        assert off.node.url("dapr-grpc") is None
    finally:
        await off.node.stop()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            await start_node(tmp_path / "taken", dapr_grpc_port=port)


async def test_a_node_without_grpc_starts_without_the_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mezzo.messaging.compat.dapr_grpc", None)  # as if grpcio were not installed
    running = await start_node(tmp_path / "data")
    try:
        assert running.node.url("dapr-grpc") is None and running.node.url("api") is not None
    finally:
        await running.node.stop()


def test_mezzo_up_serves_the_sdk_and_stops_cleanly_with_a_stream_open(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The node as users run it (uvloop, signals): the SDK publishes and subscribes; SIGTERM ends the stream."""
    port = free_port()
    running = spawn_node(tmp_path / "data", {"MEZZO_DAPR_GRPC_PORT": str(port)})
    try:
        point_sdk(monkeypatch, running.url, f"127.0.0.1:{port}", running.token)
        with DaprClient() as client:
            client.publish_event("mezzo", "up-orders", '{"n": 1}', data_content_type="application/json")
            sub = client.subscribe("mezzo", "up-orders")
            message = sub.next_message()
            assert message.data() == {"n": 1}
            sub.respond_success(message)
            assert stop_process(running) == 0
            sub.close()
    finally:
        if running.process is not None and running.process.poll() is None:
            stop_process(running)
    log = next(tmp_path.glob("node-*.log")).read_text()
    assert "Traceback" not in log and "dapr-grpc" in log


# the other engines ----------------------------------------------------------------------------------


@pytest.fixture(params=["redis", "nats", "postgres"])
async def engine_node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningNode]:
    """A node whose broker is a real engine, on streams, keys or a schema of this test alone."""
    engine, unique = request.param, uuid.uuid4().hex[:12]
    env = {"redis": ("MEZZO_TEST_REDIS", "redis://127.0.0.1:6379/0", backends.redis_problem),
           "nats": ("MEZZO_TEST_NATS", "nats://127.0.0.1:4222", backends.nats_problem),
           "postgres": ("MEZZO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test", backends.postgres_problem)}
    variable, default, problem_of = env[engine]
    base = os.environ.get(variable, default)
    problem = await problem_of(base)
    if problem:
        message = f"{engine} is not reachable ({problem})"
        if REQUIRE_BACKENDS:
            pytest.fail(f"MEZZO_REQUIRE_BACKENDS=1 but {message}", pytrace=False)
        pytest.skip(message)
    join = "&" if "?" in base else "?"
    name = {"redis": f"mezzo-test:{unique}:", "nats": f"MZT{unique}", "postgres": f"t_{unique}"}[engine]
    broker = f"{base}{join}{'schema' if engine == 'postgres' else 'prefix'}={name}"
    running = await start_node(tmp_path / "data", broker=broker)
    try:
        yield running
    finally:
        await running.node.stop()
        if engine == "redis":
            backends.delete_redis_prefix(base, name)
        elif engine == "nats":
            await backends.delete_nats_streams(base, name)
        else:
            await backends.drop_postgres_schema(base, name)


async def test_publish_and_stream_on_every_engine(engine_node: RunningNode, topic: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    point_sdk(monkeypatch, engine_node.url, grpc_address(engine_node), engine_node.token)
    client = await new_client()
    sub = await in_thread(client.subscribe, "mezzo", topic, dead_letter_topic=f"{topic}-dead")
    try:
        response = await in_thread(client.publish_events, "mezzo", topic, ["one", "two"])
        assert response.failed_entries == []
        one, two = await next_message(sub), await next_message(sub)
        assert (one.data(), two.data()) == ("one", "two")
        sub.respond_retry(one)
        sub.respond_drop(two)
        again = await next_message(sub)
        assert (again.id(), again.data()) == (one.id(), "one")
        sub.respond_success(again)
        await wait_for(lambda: _settled(engine_node, topic, "admin"))
    finally:
        await in_thread(sub.close)
        client.close()
    async with engine_node.client() as mezzo:
        letters = await mezzo.messaging.read(f"{topic}-dead")
    assert [m.data for m in letters] == ["two"]
