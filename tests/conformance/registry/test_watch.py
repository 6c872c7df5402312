"""Being told of changes: blocking queries, the event stream, and the in-memory view's subscribers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from mezzo.registry.view import RegistryView
from mezzo.testing.fixtures import RunningNode, wait_for

from .conftest import SVC, listed, register


async def test_blocking_query_answers_at_once_on_change_or_at_timeout(http: httpx.AsyncClient) -> None:
    await register(http, "orders", id="a", host="h", port=1)
    index = (await listed(http, "orders"))["index"]

    same = await listed(http, "orders", index=index, wait="200ms")  # nothing changes: same index at timeout
    assert same["index"] == index and [i["id"] for i in same["instances"]] == ["a"]
    older = await listed(http, "orders", index=index - 1, wait="30s")  # the caller is behind: at once
    assert older["index"] == index

    waiting = asyncio.create_task(listed(http, "orders", index=index, wait="30s"))
    await register(http, "orders", id="b", host="h", port=2)
    changed = await asyncio.wait_for(waiting, 30)
    assert changed["index"] > index and [i["id"] for i in changed["instances"]] == ["a", "b"]

    other = asyncio.create_task(listed(http, "orders", index=changed["index"], wait="30s"))
    await register(http, "billing", host="h", port=3)  # another service does not wake it
    await http.delete(f"{SVC}/orders/instances/a")
    assert [i["id"] for i in (await asyncio.wait_for(other, 30))["instances"]] == ["b"]


async def test_blocking_query_on_the_service_list(http: httpx.AsyncClient) -> None:
    first = (await http.get("/v1/registry/services")).json()
    assert first["items"] == [] and first["index"] >= 1
    waiting = asyncio.create_task(http.get("/v1/registry/services", params={"index": first["index"], "wait": "30s"}))
    await register(http, "orders", host="h", port=1)
    r = await asyncio.wait_for(waiting, 30)
    assert [s["name"] for s in r.json()["items"]] == ["orders"]
    assert int(r.headers["X-Mezzo-Index"]) > first["index"]


async def events(http: httpx.AsyncClient, service: str, headers: dict[str, str] | None = None,
                 **params: Any) -> AsyncIterator[dict[str, Any]]:
    async with http.stream("GET", f"{SVC}/{service}:watch", params=params, headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif line == "" and "data" in event:
                yield event
                event = {}


async def test_event_stream_sends_the_list_now_and_on_every_change(http: httpx.AsyncClient) -> None:
    await register(http, "orders", id="a", host="h", port=1)
    stream = events(http, "orders")
    first = await asyncio.wait_for(anext(stream), 30)
    assert [i["id"] for i in first["data"]["instances"]] == ["a"] and first["id"] == first["data"]["index"]
    await register(http, "orders", id="b", host="h", port=2)
    second = await asyncio.wait_for(anext(stream), 30)
    assert [i["id"] for i in second["data"]["instances"]] == ["a", "b"] and second["id"] > first["id"]
    await http.delete(f"{SVC}/orders/instances/a")
    third = await asyncio.wait_for(anext(stream), 30)
    assert [i["id"] for i in third["data"]["instances"]] == ["b"]
    await stream.aclose()

    # reconnecting with the last id skips what the client has; the next change arrives
    again = events(http, "orders", {"Last-Event-ID": str(third["id"])})
    pending = asyncio.ensure_future(anext(again))
    await register(http, "orders", id="c", host="h", port=3)
    fourth = await asyncio.wait_for(pending, 30)
    assert [i["id"] for i in fourth["data"]["instances"]] == ["b", "c"]
    await again.aclose()


async def test_stream_ahead_of_the_registry_starts_over(http: httpx.AsyncClient) -> None:
    await register(http, "orders", id="a", host="h", port=1)
    stream = events(http, "orders", {"Last-Event-ID": "999999999"})
    first = await asyncio.wait_for(anext(stream), 30)
    await stream.aclose()
    assert [i["id"] for i in first["data"]["instances"]] == ["a"]


async def test_view_subscribers_are_told_of_changes(reg: RunningNode, http: httpx.AsyncClient) -> None:
    view = reg.node.service(RegistryView)
    seen: list[tuple[str, str]] = []
    unsubscribe = view.subscribe(lambda namespace, service: seen.append((namespace, service)))
    version = view.version
    await register(http, "orders", id="a", host="h", port=1)
    await register(http, "orders", namespace="team-a", id="b", host="h", port=2)
    await wait_for(lambda: ("default", "orders") in seen and ("team-a", "orders") in seen)
    assert view.version > version
    assert [i.id for i in view.instances("default", "orders")] == ["a"]
    assert view.instances("team-a", "orders")[0].address == "h:2"
    unsubscribe()
    count = len(seen)
    await http.delete(f"{SVC}/orders/instances/a")
    await wait_for(lambda: view.instances("default", "orders") == [])
    assert len(seen) == count
