"""Audit of issue 3's interfaces: CloudEvents batches, the SSE stream with acks, the handler decorator,
Dapr compatibility (publish and the subscriber reply contract), the WebSocket consumer's bad input, and
the CLI commands that had no test. The engine does not matter here: one embedded node each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.responses import Response

from mezzo.messaging.service import MessagingService
from mezzo.testing.fixtures import RunningNode, wait_for

from .test_messaging import drain
from .test_push import Endpoint, endpoint, subscribe  # noqa: F401  (the endpoint fixture)

TRACEPARENT = "00-" + "4" * 32 + "-" + "5" * 16 + "-01"


def _http(node: RunningNode, token: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {token or node.token}"},
                             timeout=30)


async def _group(node: RunningNode, topic: str, group: str) -> dict[str, Any]:
    async with node.client() as client:
        return {g["group"]: g for g in await client.messaging.groups(topic)}[group]  # type: ignore[no-any-return]


# CloudEvents ---------------------------------------------------------------------------------------


async def test_cloudevents_batch_mode(node: RunningNode) -> None:
    batch = "application/cloudevents-batch+json"
    events = [{"specversion": "1.0", "id": f"b-{i}", "source": "/shop", "type": "order.paid", "data": {"n": i}}
              for i in range(3)]
    async with _http(node) as http:
        r = await http.post("/v1/topics/ce-batch:publish", content=orjson.dumps(events),
                            headers={"content-type": batch})
        assert r.status_code == 200, r.text
        assert [m["id"] for m in r.json()["messages"]] == ["b-0", "b-1", "b-2"]
        bad = await http.post("/v1/topics/ce-batch:publish", content=orjson.dumps([events[0], {"specversion": "1.0",
                              "id": "x", "type": "t"}]), headers={"content-type": batch})
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "[1].source", bad.text
        not_a_list = await http.post("/v1/topics/ce-batch:publish", content=b"{}", headers={"content-type": batch})
        assert not_a_list.status_code == 400
    async with node.client() as client:
        got = await drain(client.messaging.subscribe("ce-batch", "g", batch=10), 3)
    assert [(m.id, m.data, m.attributes["ce.type"]) for m in got] == [
        (f"b-{i}", {"n": i}, "order.paid") for i in range(3)]


async def test_cloudevents_tracing_extension_continues_the_trace(node: RunningNode) -> None:
    """CloudEvents' distributed tracing extension: an event's own traceparent is the message's."""
    async with _http(node) as http:
        r = await http.post("/v1/topics/ce-traced:publish", content=b"{}", headers={
            "ce-specversion": "1.0", "ce-id": "t-1", "ce-source": "/s", "ce-type": "t",
            "ce-traceparent": TRACEPARENT, "content-type": "application/json"})
        assert r.status_code == 200, r.text
    async with node.client() as client:
        [m] = await drain(client.messaging.subscribe("ce-traced", "g"), 1)
    assert m.attributes["traceparent"] == TRACEPARENT


# the streaming consume endpoint (SSE) ---------------------------------------------------------------


async def test_sse_stream_delivers_and_its_receipts_ack(node: RunningNode) -> None:
    async with node.client() as client:
        await client.messaging.publish_batch("sse", [{"data": i} for i in range(3)])
    events: list[tuple[str, dict[str, Any]]] = []
    async with _http(node) as http, http.stream("GET", "/v1/topics/sse/groups/g:stream?max=2",
                                                timeout=httpx.Timeout(30, read=None)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        buffer = b""
        async for chunk in r.aiter_bytes():
            buffer += chunk
            *done, buffer = buffer.split(b"\n\n")
            for block in done:
                fields = dict(line.split(": ", 1) for line in block.decode().splitlines() if not line.startswith(":"))
                if fields.get("event") == "message":
                    events.append((fields["id"], orjson.loads(fields["data"])))
            if len(events) == 3:
                break
        ack = await http.post("/v1/topics/sse/groups/g:ack", json={"receipts": [receipt for receipt, _ in events]})
        assert ack.status_code == 200, ack.text
    assert [m["data"] for _, m in events] == [0, 1, 2]
    assert all(receipt == m["receipt"] for receipt, m in events)
    assert (await _group(node, "sse", "g"))["lag"] == 0


async def test_sse_stream_of_an_unknown_topic_is_404(node: RunningNode) -> None:
    async with _http(node) as http:
        r = await http.get("/v1/topics/nothing-here/groups/g:stream")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


# the WebSocket consumer ----------------------------------------------------------------------------


async def test_websocket_consumer_answers_bad_commands_and_stays_open(node: RunningNode) -> None:
    import websockets

    async with node.client() as client:
        await client.messaging.publish("ws-bad", "m")
    url = node.url.replace("http", "ws", 1) + "/v1/topics/ws-bad/groups/g:connect"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {node.token}"}) as ws:
        [message] = orjson.loads(await ws.recv())["messages"]
        for bad in (b'{"ack": ["x"]}', "[1]", "{", '{"nack": [], "delay": "1s"}', '{"nack": ["a"], "delay": "soon"}',
                    '{"stop": 1}'):
            await ws.send(bad)
            answer = orjson.loads(await ws.recv())
            assert answer["error"]["status"] in (400, 409), (bad, answer)
        await ws.send(orjson.dumps({"ack": [message["receipt"]]}).decode())
        await wait_for(lambda: _lag_is(node, "ws-bad", 0))


async def _lag_is(node: RunningNode, topic: str, want: int) -> bool:
    return (await _group(node, topic, "g"))["lag"] == want


# SDK ----------------------------------------------------------------------------------------------


async def test_leaving_a_subscription_hands_back_what_it_fetched(node: RunningNode) -> None:
    """``async with subscribe(...)``: messages fetched in a batch but not handed out are nacked on
    exit, so another consumer gets them at once instead of after the 30 s ack timeout."""
    async with node.client() as client:
        await client.messaging.publish_batch("handback", [{"data": i} for i in range(4)])
        async with client.messaging.subscribe("handback", "g", batch=4, wait=5) as sub:
            async for msg in sub:
                await msg.ack()
                break
        rest = await client.messaging.subscribe("handback", "g", batch=10).pull(wait=0.5)
    assert sorted(m.data for m in rest) == [1, 2, 3]




async def test_handler_decorator_acks_on_return_and_nacks_on_raise(node: RunningNode) -> None:
    seen: list[tuple[Any, int]] = []
    async with node.client() as client:
        await client.messaging.publish_batch("handled", [{"data": "ok"}, {"data": "flaky"}])

        @client.messaging.handler("handled", "workers")
        async def work(msg: Any) -> None:
            seen.append((msg.data, msg.attempt))
            if msg.data == "flaky" and msg.attempt == 1:
                raise RuntimeError("try again")

        running = asyncio.create_task(client.messaging.run_handlers())
        try:
            await wait_for(lambda: ("flaky", 2) in seen, timeout=20)
            await wait_for(lambda: _lag_is_group(node, "handled", "workers", 0))
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    assert sorted(seen) == [("flaky", 1), ("flaky", 2), ("ok", 1)]


async def _lag_is_group(node: RunningNode, topic: str, group: str, want: int) -> bool:
    return (await _group(node, topic, group))["lag"] == want


# Dapr: publish -------------------------------------------------------------------------------------


async def test_dapr_publish_of_a_cloudevent_fills_in_what_dapr_fills_in(node: RunningNode) -> None:
    """Dapr accepts an application/cloudevents+json body without source, type or specversion
    (it sets Dapr's defaults), so an app that publishes such events through Dapr works unchanged."""
    async with httpx.AsyncClient(base_url=node.url) as http:
        r = await http.post("/v1.0/publish/mezzo/dapr-ce", content=b'{"id": "d-1", "data": {"a": 1}}',
                            headers={"dapr-api-token": node.token, "content-type": "application/cloudevents+json"})
        assert r.status_code == 204, r.text
    async with node.client() as client:
        [m] = await drain(client.messaging.subscribe("dapr-ce", "g"), 1)
    assert (m.id, m.data) == ("d-1", {"a": 1})
    assert (m.attributes["ce.source"], m.attributes["ce.type"]) == ("Dapr", "com.dapr.event.sent")


async def test_dapr_publish_carries_the_trace_and_answers_as_dapr(node: RunningNode) -> None:
    async with _http(node) as http:
        r = await http.post("/v1/tokens", json={"name": "elsewhere", "role": "developer", "namespaces": ["other"]})
        assert r.status_code == 201, r.text
        other = r.json()["token"]
    async with httpx.AsyncClient(base_url=node.url) as http:
        r = await http.post("/v1.0/publish/mezzo/dapr-traced", content=b"hi",
                            headers={"dapr-api-token": node.token, "traceparent": TRACEPARENT})
        assert r.status_code == 204, r.text
        forbidden = await http.post("/v1.0/publish/mezzo/dapr-traced", content=b"x", headers={"dapr-api-token": other})
        assert forbidden.status_code == 403 and forbidden.json()["errorCode"] == "ERR_PUBSUB_FORBIDDEN"
        bad_name = await http.post("/v1.0/publish/mezzo/Not%20A%20Topic", content=b"x",
                                   headers={"dapr-api-token": node.token})
        assert bad_name.status_code == 404 and "errorCode" in bad_name.json()
        bad_namespace = await http.post("/v1.0/publish/mezzo/dapr-traced?metadata.namespace=No!", content=b"x",
                                        headers={"dapr-api-token": node.token})
        assert bad_namespace.status_code == 404 and "metadata.namespace" in bad_namespace.json()["message"]
        bad_event = await http.post("/v1.0/publish/mezzo/dapr-traced", content=b"[1]", headers={
            "dapr-api-token": node.token, "content-type": "application/cloudevents+json"})
        assert bad_event.status_code == 400 and bad_event.json()["errorCode"] == "ERR_PUBSUB_CLOUD_EVENTS_SER"
    async with node.client() as client:
        [m] = await drain(client.messaging.subscribe("dapr-traced", "g"), 1)
    assert m.data == "hi" and m.content_type == "text/plain"
    assert m.attributes["traceparent"] == TRACEPARENT


async def test_dapr_publish_that_fails_is_500_with_dapr_error(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url) as http:
        r = await http.post("/v1.0/publish/mezzo/dapr-big", content=b"x" * (1024 * 1024 + 1),
                            headers={"dapr-api-token": node.token})
    assert r.status_code == 500 and r.json()["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE", r.text


# Dapr: the subscriber's reply contract --------------------------------------------------------------


@pytest.mark.parametrize(("reply", "outcome"), [
    (Response(b'{"status": "SUCCESS"}', media_type="application/json"), "ack"),
    (Response(b"", status_code=204), "ack"),
    (Response(b"not json", media_type="text/plain"), "ack"),  # Dapr: a body that does not parse is ignored
    (Response(b'{"status": "RETRY"}', media_type="text/html"), "retry"),  # Dapr reads any body, whatever its type
    (Response(b'{"status": "BOGUS"}', media_type="application/json"), "retry"),  # Dapr: unknown status retries
    (Response(b'{"status": "DROP"}', media_type="text/plain"), "drop"),
    (Response(b"", status_code=404), "drop"),
    (Response(b'{"status": "SUCCESS"}', status_code=500, media_type="application/json"), "retry"),
], ids=["success", "empty-204", "not-json", "retry-as-html", "unknown-status", "drop-as-text", "404", "500"])
async def test_push_honours_the_reply_as_dapr_does(node: RunningNode, endpoint: tuple[Endpoint, str],  # noqa: F811
                                                   reply: Response, outcome: str) -> None:
    app, url = endpoint
    app.script["it"] = [reply]
    await subscribe(node, url, deadLetterTopic="orders-dlq", backoff={"initial": "1ms", "max": "1ms"})
    async with node.client() as client:
        await client.messaging.publish("orders", {"say": "it"})
        if outcome == "retry":
            await wait_for(lambda: len(app.events) == 2)  # sent again, then acked by the default 200
        else:
            await wait_for(lambda: app.events)
        await wait_for(lambda: _lag_is_group(node, "orders", "pushed", 0))
        topics = {t["name"]: t for t in await client.messaging.topics()}
    assert len(app.events) == (2 if outcome == "retry" else 1)
    assert ("orders-dlq" in topics and topics["orders-dlq"]["messages"] == 1) == (outcome == "drop")


# filters -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "matches"), [
    ("key == 'k1'", [True, False, False]),
    ("key != 'k1'", [False, True, True]),
    ("attributes.tier in ['gold', 'silver']", [True, True, False]),
    ("attributes.tier exists", [True, True, False]),
    ("not attributes.tier exists", [False, False, True]),
    ("tags has 'a' or tags has 'b'", [True, True, False]),
    ("(tags has 'a' or tags has 'b') and attributes.tier == 'silver'", [False, True, False]),
    ("tags has 'a' or tags has 'b' and attributes.tier == 'silver'", [True, True, False]),  # and binds tighter
    ("attributes.name == 'it\\'s'", [False, False, True]),
])
def test_filter_language(expression: str, matches: list[bool]) -> None:
    from mezzo.messaging.filters import compile_filter

    messages = [(["a"], "k1", {"tier": "gold"}), (["b"], "k2", {"tier": "silver"}), ([], None, {"name": "it's"})]
    predicate = compile_filter(expression)
    assert [predicate(*m) for m in messages] == matches


@pytest.mark.parametrize("bad", ["", "tags has", "key = 'x'", "colour == 'red'", "(key == 'a'", "key == 'a' or",
                                 "attributes. == 'x'", "key in 'a'", "tags has 'a' garbage"])
def test_invalid_filters_are_refused(bad: str) -> None:
    from mezzo.messaging.filters import FilterError, compile_filter

    with pytest.raises(FilterError):
        compile_filter(bad)


async def test_push_subscription_filter_posts_only_what_matches(node: RunningNode,
                                                                 endpoint: tuple[Endpoint, str]) -> None:  # noqa: F811
    app, url = endpoint
    await subscribe(node, url, filter="tags has 'paid'")
    async with node.client() as client:
        await client.messaging.publish("orders", {"say": "unpaid"})
        await client.messaging.publish("orders", {"say": "paid"}, tags=["paid"])
    await wait_for(lambda: app.events)
    await wait_for(lambda: _lag_is_group(node, "orders", "pushed", 0))
    assert [e["data"]["say"] for e in app.events] == ["paid"]


# CLI -------------------------------------------------------------------------------------------------


async def mezzo(node: RunningNode, *args: str) -> tuple[int, str, str]:
    """The CLI in a subprocess, without blocking this loop (the node runs in it)."""
    env = {**os.environ, "MEZZO_URL": node.url, "MEZZO_TOKEN": node.token, "COLUMNS": "200"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "mezzo", *args, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def dead_letters(node: RunningNode) -> AsyncIterator[RunningNode]:
    """Topic ``cli`` (traced) whose group ``g`` gave up on message ``m-1``: one letter in ``cli.g.dlq``."""
    async with node.client() as client:
        await client.resources.apply([
            {"apiVersion": "mezzo.dev/v1", "kind": "Topic", "metadata": {"name": "cli"}, "spec": {"trace": True}},
            {"apiVersion": "mezzo.dev/v1", "kind": "Subscription", "metadata": {"name": "cli-g"},
             "spec": {"topic": "cli", "group": "g", "maxDeliveries": 1}}])
        svc = node.node.service(MessagingService)
        await wait_for(lambda: svc.topics.get("default/cli") and ("default/cli", "g") in svc.subscriptions)
        await client.messaging.publish("cli", {"n": 1}, id="m-1")
        [m] = await drain(client.messaging.subscribe("cli", "g", consumer="worker-1"), 1)
        await m.nack()
    yield node


async def test_cli_dlq_list_and_replay(dead_letters: RunningNode) -> None:
    code, out, err = await mezzo(dead_letters, "mq", "dlq", "list", "cli.g.dlq")
    assert code == 0, err
    [row] = [line.split() for line in out.splitlines() if "m-1" in line]
    assert row == ["0", "m-1", "cli", "g", "1", "rejected", "on", "last", "attempt"]
    code, out, err = await mezzo(dead_letters, "mq", "dlq", "replay", "cli.g.dlq")
    assert (code, out.strip()) == (0, "replayed 1 messages"), err
    async with dead_letters.client() as client:
        [back] = await drain(client.messaging.subscribe("cli", "g"), 1)
    assert back.id == "m-1.replay.0" and back.data == {"n": 1}
    code, out, err = await mezzo(dead_letters, "mq", "dlq", "replay", "cli.g.dlq")
    assert (code, out.strip()) == (0, "replayed 0 messages"), err


async def test_cli_trace(dead_letters: RunningNode) -> None:
    code, out, err = await mezzo(dead_letters, "mq", "trace", "m-1")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
    assert [r[2] for r in rows] == ["published", "delivered", "dead-lettered"]
    assert rows[1][3:6] == ["g", "worker-1", "1"]
    assert "deadLetterTopic=cli.g.dlq" in out
    code, _, err = await mezzo(dead_letters, "mq", "trace", "never-published")
    assert code == 1 and "Not Found" in err


async def test_cli_groups_show_the_lag_and_bad_options_are_errors(node: RunningNode) -> None:
    async with node.client() as client:
        await client.messaging.publish_batch("lagging", [{"data": i} for i in range(3)])
        sub = client.messaging.subscribe("lagging", "g", batch=1)
        await sub.ack(await drain(sub, 1))
    code, out, err = await mezzo(node, "mq", "groups", "lagging")
    assert code == 0, err
    assert [line.split() for line in out.splitlines() if line.split()[:1] == ["g"]] == [["g", "2", "0"]]
    code, out, err = await mezzo(node, "mq", "seek", "lagging", "--group", "g", "--to", "soon")
    assert code == 2 and "Traceback" not in err and "--to" in err, err
    code, out, err = await mezzo(node, "mq", "publish", "lagging", "x", "--attr", "no-equals-sign")
    assert code == 2 and "Traceback" not in err and "--attr" in err, err
    code, out, err = await mezzo(node, "mq", "consume", "lagging", "--group", "g", "--wait", "0.2", "--max", "0")
    assert code == 0 and [json.loads(line)["data"] for line in out.splitlines()] == [1, 2], err
