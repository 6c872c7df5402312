"""Push subscriptions deliver CloudEvents to HTTP endpoints and honour Dapr's reply contract."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mezzo.node.server import HttpListener, bind
from mezzo.resilience.policies import PolicyRegistry
from mezzo.sdk.errors import APIError
from mezzo.testing.fixtures import RunningNode, start_node, wait_for


class Endpoint:
    """A subscriber app: records every event; replies as ``script`` says for each event id."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.script: dict[str, list[Response]] = {}

    async def receive(self, request: Request) -> Response:
        event = orjson.loads(await request.body())
        self.events.append(event)
        self.headers.append(dict(request.headers))
        replies = self.script.get(event["data"].get("say", ""), [])
        return replies.pop(0) if replies else Response(status_code=200)


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[Endpoint, str]]:
    app_state = Endpoint()
    app = Starlette(routes=[Route("/events", app_state.receive, methods=["POST"])])
    listener = HttpListener("subscriber", app, bind("127.0.0.1", 0), drain_timeout=0.5)
    await listener.start()
    try:
        yield app_state, listener.url + "/events"
    finally:
        await listener.close()


async def subscribe(mq: RunningNode, url: str, **spec: Any) -> None:
    async with mq.client() as client:
        await client.resources.apply({
            "apiVersion": "mezzo.dev/v1", "kind": "Subscription", "metadata": {"name": "push"},
            "spec": {"topic": "orders", "group": "pushed", "endpoint": url,
                     "backoff": {"initial": "1ms", "max": "5ms"}, **spec}})


async def test_push_delivers_cloudevents_and_retries(mq: RunningNode, endpoint: tuple[Endpoint, str]) -> None:
    app, url = endpoint
    app.script["flaky"] = [Response(status_code=500), JSONResponse({"status": "RETRY"})]
    await subscribe(mq, url)
    async with mq.client() as client:
        await client.messaging.publish("orders", {"say": "hello"}, key="o-1",
                                       attributes={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})
        await client.messaging.publish("orders", {"say": "flaky"})
    await wait_for(lambda: len(app.events) >= 4)
    hello = next(e for e in app.events if e["data"]["say"] == "hello")
    assert hello["specversion"] == "1.0" and hello["type"] == "mezzo.message"
    assert hello["source"] == "mezzo/default/orders" and hello["partitionkey"] == "o-1"
    assert hello["datacontenttype"] == "application/json"
    headers = app.headers[app.events.index(hello)]
    assert headers["content-type"] == "application/cloudevents+json"
    assert headers["traceparent"].startswith("00-" + "a" * 32)
    assert [e["data"]["say"] for e in app.events].count("flaky") == 3  # 500, RETRY, then success
    async with mq.client() as client:
        await wait_for(lambda: _lag_is(mq, 0))


async def _lag(mq: RunningNode) -> int:
    from mezzo.messaging.service import MessagingService

    broker = mq.node.service(MessagingService).broker
    if "pushed" not in await broker.groups("default/orders"):
        return -1
    return (await broker.group_stats("default/orders", "pushed")).lag


async def test_push_drop_goes_to_dead_letters(mq: RunningNode, endpoint: tuple[Endpoint, str]) -> None:
    app, url = endpoint
    app.script["poison"] = [JSONResponse({"status": "DROP"})]
    await subscribe(mq, url, deadLetterTopic="orders-dlq")
    async with mq.client() as client:
        await client.messaging.publish("orders", {"say": "poison"})
        await wait_for(lambda: app.events)
        letters = await wait_for(lambda: _read(client, "orders-dlq"))
        assert letters[0].attributes["mezzo.dlq.reason"] == "dropped by the endpoint"


async def _read(client: Any, topic: str) -> list[Any]:
    try:
        return list(await client.messaging.read(topic))
    except Exception:
        return []


async def test_resiliency_policy_retries_push_in_place(mq: RunningNode, endpoint: tuple[Endpoint, str]) -> None:
    """A Resiliency retry targeting the subscription re-POSTs at once, before Mezzo's own backoff."""
    app, url = endpoint
    app.script["flaky"] = [Response(status_code=503), Response(status_code=500)]
    async with mq.client() as client:
        await client.resources.apply({
            "apiVersion": "mezzo.dev/v1", "kind": "Resiliency", "metadata": {"name": "push-policy"},
            "spec": {"policies": {"retries": {"quick": {"policy": "constant", "duration": "1ms", "maxRetries": 3}}},
                     "targets": {"subscriptions": {"push": {"retry": "quick"}}}}})
    registry = mq.node.service(PolicyRegistry)
    await wait_for(lambda: not registry.policy_for("subscriptions", "push").is_noop)
    await subscribe(mq, url, backoff={"initial": "1h", "max": "1h"})  # Mezzo's own retry would take an hour
    async with mq.client() as client:
        await client.messaging.publish("orders", {"say": "flaky"})
    await wait_for(lambda: len(app.events) == 3)
    await wait_for(lambda: _lag_is(mq, 0))  # acked after the third POST, on the first delivery


async def _lag_is(mq: RunningNode, want: int) -> bool:
    return await _lag(mq) == want


async def test_allowed_hosts_bound_where_messaging_calls(tmp_path: Path, endpoint: tuple[Endpoint, str]) -> None:
    """MEZZO_MESSAGING_ALLOW_HOSTS: a push endpoint on another host is never called (each delivery
    fails, then the message is a dead letter); a half-message checkUrl on another host is a 400."""
    app, url = endpoint
    node = await start_node(tmp_path / "data", messaging_allow_hosts="events.internal, 10.0.0.0/8")
    try:
        await subscribe(node, url, deadLetterTopic="orders-dlq", maxDeliveries=2)
        async with node.client() as client:
            await client.messaging.publish("orders", {"say": "hello"})
            letters = await wait_for(lambda: _read(client, "orders-dlq"))
            assert letters[0].data == {"say": "hello"}
            assert app.events == []  # not one request reached the endpoint
            with pytest.raises(APIError) as refused:
                await client.messaging.transaction("orders", [{"data": "x"}], check_url=url).prepare()
            assert refused.value.status == 400 and "MEZZO_MESSAGING_ALLOW_HOSTS" in str(refused.value)
    finally:
        await node.node.stop()
