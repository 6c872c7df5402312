"""A revoked or expired token ends every long-lived stream it opened, not only the resource watch.

Each test opens a stream with a non-admin token, revokes it (one lets its ttl run out), and checks that
the stream ends (a last ``event: error`` with a 401 problem; a WebSocket closed with 4401) and that what
happens after the revocation does not reach it. Without the per-event and per-heartbeat check these
streams keep running and deliver it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import websockets

from mezzo.config.hub import ConfigHub
from mezzo.messaging.codec import encode_publish_frame
from mezzo.testing.fixtures import RunningNode, wait_for

from .test_authz_review import http, make_token, revoke

END = 30.0  # generous: how long a stream may take to notice (its next event or heartbeat)
CONFIG = "/v1/config/apps/shop/envs/prod/clusters/default/namespaces/application"


@dataclass
class Stream:
    """A server-sent event stream, read in the background until the server ends it."""

    data: bytearray = field(default_factory=bytearray)
    reader: asyncio.Task[None] | None = None

    async def ended(self) -> bytes:
        assert self.reader is not None
        await asyncio.wait_for(asyncio.shield(self.reader), END)
        return bytes(self.data)


@contextlib.asynccontextmanager
async def sse(node: RunningNode, token: str, path: str, **params: Any) -> AsyncIterator[Stream]:
    stream = Stream()
    async with http(node, token) as c, c.stream("GET", path, params=params,
                                                timeout=httpx.Timeout(10, read=None)) as r:
        assert r.status_code == 200, (await r.aread()).decode()

        async def read() -> None:
            async for chunk in r.aiter_bytes():
                stream.data += chunk

        stream.reader = asyncio.create_task(read())
        try:
            yield stream
        finally:
            stream.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await stream.reader


def assert_ended_unauthorized(data: bytes) -> None:
    """The stream's last event is ``event: error`` with the 401 problem of a revoked or expired token."""
    _, marker, last = data.rstrip().rpartition(b"event: error\ndata: ")
    assert marker, f"the stream ended without an error event; it ends: {data[-300:]!r}"
    problem = orjson.loads(last)
    assert problem["status"] == 401 and problem["title"] == "Unauthorized", problem
    assert problem["detail"] == "invalid, expired or revoked token", problem
    assert problem["type"] == "https://mezzo.dev/problems/unauthorized", problem


async def expiring_token(node: RunningNode, name: str, role: str, namespaces: list[str], ttl: str) -> str:
    async with http(node) as c:
        r = await c.post("/v1/tokens", json={"name": name, "role": role, "namespaces": namespaces, "ttl": ttl})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def publish(node: RunningNode, topic: str, data: str) -> None:
    async with http(node) as c:
        r = await c.post(f"/v1/topics/{topic}:publish", json={"data": data})
    assert r.status_code == 200, r.text


def socket(node: RunningNode, token: str, path: str) -> Any:
    url = node.url.replace("http", "ws", 1) + path
    return websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"})


async def until_closed(ws: Any) -> tuple[int | None, list[Any]]:
    """(close code, what arrived before it); fails if the server does not close the socket."""
    got: list[Any] = []
    try:
        async with asyncio.timeout(END):
            while True:
                got.append(await ws.recv())
    except websockets.exceptions.ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd else None), got


# messaging --------------------------------------------------------------------------------------------------

async def test_message_stream_ends_and_a_later_message_stays_for_the_group(node: RunningNode) -> None:
    await publish(node, "orders", "before")
    token_id, token = await make_token(node, "consumer", "developer", ["default"])
    async with sse(node, token, "/v1/topics/orders/groups/billing:stream") as stream, \
            sse(node, node.token, "/v1/topics/orders/groups/audit:stream") as admin:
        await wait_for(lambda: b'"before"' in stream.data and b'"before"' in admin.data)
        await revoke(node, token_id)
        await publish(node, "orders", "after")
        data = await stream.ended()
        assert_ended_unauthorized(data)
        assert b'"after"' not in data, "a message published after the revocation reached the revoked stream"
        # the env admin's token (no token id) is never revoked: its stream goes on
        await wait_for(lambda: b'"after"' in admin.data)
        assert not admin.reader.done()  # type: ignore[union-attr]
    async with http(node) as c:  # not lost: the group still has it

        async def pulled_after() -> bool:
            r = await c.post("/v1/topics/orders/groups/billing:pull", json={"max": 10, "wait": 1})
            return any(m.get("data") == "after" for m in r.json()["messages"])

        await wait_for(pulled_after, timeout=END)


async def test_consumer_socket_closes_4401_before_the_next_batch(node: RunningNode) -> None:
    await publish(node, "orders", "before")
    token_id, token = await make_token(node, "consumer", "developer", ["default"])
    async with socket(node, token, "/v1/topics/orders/groups/billing:connect") as ws:
        first = orjson.loads(await ws.recv())
        assert [m["data"] for m in first["messages"]] == ["before"]
        await ws.send(orjson.dumps({"ack": [m["receipt"] for m in first["messages"]]}).decode())
        await revoke(node, token_id)
        await publish(node, "orders", "after")
        code, got = await until_closed(ws)
    assert code == 4401, f"closed with {code}"
    assert not any(b'"after"' in (g if isinstance(g, bytes) else g.encode()) for g in got), got


async def test_idle_consumer_socket_with_a_full_window_closes_4401(node: RunningNode) -> None:
    """No batch is due (maxInFlight is used up, nothing acked): the socket still ends at a heartbeat."""
    await publish(node, "orders", "before")
    token_id, token = await make_token(node, "consumer", "developer", ["default"])
    async with socket(node, token, "/v1/topics/orders/groups/billing:connect?maxInFlight=1") as ws:
        assert [m["data"] for m in orjson.loads(await ws.recv())["messages"]] == ["before"]
        await revoke(node, token_id)
        code, got = await until_closed(ws)
    assert code == 4401 and got == [], (code, got)


async def test_producer_socket_publishes_no_batch_after_revocation(node: RunningNode) -> None:
    token_id, token = await make_token(node, "producer", "developer", ["default"])
    async with socket(node, token, "/v1/topics/events:publish") as ws:
        await ws.send((1).to_bytes(4, "little") + encode_publish_frame(b"one"))
        answer = orjson.loads(await ws.recv())
        assert answer["id"] == 1 and len(answer["messages"]) == 1, answer
        await revoke(node, token_id)
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await ws.send((2).to_bytes(4, "little") + encode_publish_frame(b"two"))
        code, got = await until_closed(ws)
    assert code == 4401, f"closed with {code}; answers: {got}"
    assert got == [], f"a batch sent after the revocation was answered: {got}"
    async with http(node) as c:
        topics = {t["name"]: t for t in (await c.get("/v1/topics")).json()["items"]}
    assert topics["events"]["messages"] == 1, topics["events"]


# config -----------------------------------------------------------------------------------------------------

async def release(node: RunningNode, value: str) -> None:
    async with http(node) as c:
        r = await c.put(CONFIG + "/items/greeting", json={"value": value})
        assert r.status_code == 204, r.text
        r = await c.post(CONFIG + ":publish", json={})
        assert r.status_code == 200, r.text


async def test_config_stream_ends_before_the_next_release(node: RunningNode) -> None:
    await release(node, "v1-before")
    token_id, token = await make_token(node, "app", "developer", ["default"])
    async with sse(node, token, "/v1/config/stream", app="shop", env="prod", namespace="application") as stream:
        await wait_for(lambda: b"v1-before" in stream.data and b": live" in stream.data)
        await revoke(node, token_id)
        await release(node, "v2-after")
        data = await stream.ended()
    assert_ended_unauthorized(data)
    assert b"v2-after" not in data, "a release after the revocation reached the revoked stream"


async def test_config_long_poll_answers_401_not_the_change(node: RunningNode) -> None:
    await release(node, "v1-before")
    token_id, token = await make_token(node, "app", "developer", ["default"])
    async with http(node, token) as c:
        r = await c.get("/v1/config/notifications", params={
            "app": "shop", "env": "prod", "notifications": '[{"namespaceName": "application", "notificationId": -1}]'})
        seen = r.json()[0]["notificationId"]
        hub = node.node.service(ConfigHub)
        poll = asyncio.create_task(c.get("/v1/config/notifications", timeout=END, params={
            "app": "shop", "env": "prod", "timeout": 60,
            "notifications": f'[{{"namespaceName": "application", "notificationId": {seen}}}]'}))
        await wait_for(lambda: hub._waiters.get("application"))  # parked, its token checked
        await revoke(node, token_id)
        await release(node, "v2-after")
        answer = await poll
    assert answer.status_code == 401, f"{answer.status_code}: {answer.text}"
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"] == "invalid, expired or revoked token"


# registry ---------------------------------------------------------------------------------------------------

async def register(node: RunningNode, host: str) -> None:
    async with http(node) as c:
        r = await c.put("/v1/registry/services/payments/instances", json={"host": host, "port": 8080})
    assert r.status_code in (200, 201), r.text


async def test_registry_watch_ends_before_the_next_change(node: RunningNode) -> None:
    await register(node, "10.0.0.1")
    token_id, token = await make_token(node, "client", "viewer", ["default"])
    async with sse(node, token, "/v1/registry/services/payments:watch") as stream:
        await wait_for(lambda: b"10.0.0.1" in stream.data)
        await revoke(node, token_id)
        await register(node, "10.0.0.2")
        data = await stream.ended()
    assert_ended_unauthorized(data)
    assert b"10.0.0.2" not in data, "a registration after the revocation reached the revoked watch"


# cache ------------------------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def tracked_stream(node: RunningNode, token: str, heartbeat: float) -> AsyncIterator[Stream]:
    """The invalidation stream of namespace ``near``, with key ``k`` read through it (tracked)."""
    async with http(node) as c:
        assert (await c.put("/v1/cache/near/keys/k", json={"value": "v1"})).status_code == 204
    async with sse(node, token, "/v1/cache/near/invalidations", heartbeat=heartbeat) as stream:
        await wait_for(lambda: b"event: hello" in stream.data and stream.data.endswith(b"\n\n"))
        hello = orjson.loads(stream.data.split(b"data: ", 1)[1].split(b"\n", 1)[0])
        async with http(node, token) as c:
            r = await c.get("/v1/cache/near/keys/k", headers={"Mezzo-Tracking": hello["listener"]})
            assert r.status_code == 200 and r.headers.get("Mezzo-Tracking") == "on", r.text
        yield stream


async def test_invalidation_stream_ends_before_the_next_invalidation(node: RunningNode) -> None:
    token_id, token = await make_token(node, "near-cache", "developer", ["*"])
    async with tracked_stream(node, token, 300) as stream:
        await revoke(node, token_id)
        async with http(node) as c:
            assert (await c.put("/v1/cache/near/keys/k", json={"value": "v2"})).status_code == 204
        data = await stream.ended()
    assert_ended_unauthorized(data)
    assert b'"keys"' not in data, "an invalidation after the revocation reached the revoked stream"


async def test_idle_invalidation_stream_ends_when_its_token_expires(node: RunningNode) -> None:
    """Nothing changes: the check at a heartbeat ends the stream once the token's ttl has run out."""
    token = await expiring_token(node, "near-cache", "developer", ["*"], "3s")
    async with tracked_stream(node, token, 0.05) as stream:
        data = await stream.ended()
    assert_ended_unauthorized(data)
    assert b'"keys"' not in data


async def test_idle_resource_watch_ends_when_its_token_expires(node: RunningNode, monkeypatch: Any) -> None:
    """No resource changes: the check at a heartbeat ends the watch once the token's ttl has run out
    (it used to check at events only, so an idle watch outlived its token)."""
    import mezzo.resources.api as resources_api

    monkeypatch.setattr(resources_api, "HEARTBEAT", 0.2)
    token = await expiring_token(node, "watcher", "viewer", ["default"], "3s")
    async with sse(node, token, "/v1/resources/Resiliency:watch", namespace="default") as stream:
        data = await stream.ended()
    assert_ended_unauthorized(data)
    assert b"event: ADDED" not in data
