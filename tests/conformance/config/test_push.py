"""Real-time push: Apollo-style long polling, the event stream, reconnects, several nodes, crashes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mezzo.testing.fixtures import RunningNode, spawn_node, start_node, stop_process, wait_for

NS = "/v1/config/apps/shop/envs/default/clusters/default/namespaces"
APP = f"{NS}/application"


async def publish(http: httpx.AsyncClient, key: str, value: str, path: str = APP) -> int:
    await http.put(f"{path}/items/{key}", json={"value": value})
    r = await http.post(f"{path}:publish", json={})
    assert r.status_code == 200, r.text
    return r.json()["id"]  # type: ignore[no-any-return]


def _notifications(nid: int, name: str = "application") -> dict[str, str]:
    return {"app": "shop", "notifications": json.dumps([{"namespaceName": name, "notificationId": nid}])}


async def test_long_poll_answers_at_once_then_on_publish(http: httpx.AsyncClient) -> None:
    await publish(http, "a", "1")
    r = await http.get("/v1/config/notifications", params=_notifications(-1))
    assert r.status_code == 200
    [first] = r.json()
    assert first["namespaceName"] == "application" and first["notificationId"] > 0
    r = await http.get("/v1/config/notifications", params={**_notifications(first["notificationId"]), "timeout": "0.2"})
    assert r.status_code == 304  # nothing newer within the timeout
    waiting = asyncio.create_task(http.get("/v1/config/notifications", params=_notifications(first["notificationId"])))
    await asyncio.sleep(0.05)  # let the poll park (the test holds no timing assertion)
    await publish(http, "a", "2")
    r = await asyncio.wait_for(waiting, 30)
    assert r.status_code == 200 and r.json()[0]["notificationId"] > first["notificationId"]
    got = (await http.get(f"{APP}/config")).json()
    assert got["configurations"] == {"a": "2"} and got["notificationId"] == r.json()[0]["notificationId"]


async def events(http: httpx.AsyncClient, params: dict[str, Any], headers: dict[str, str] | None = None
                 ) -> AsyncIterator[dict[str, Any]]:
    """Parsed ``config`` events of the stream, each with its ``id``."""
    async with http.stream("GET", "/v1/config/stream", params=params, headers=headers or {}) as response:
        assert response.status_code == 200
        event: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("event: "):
                event["event"] = line[7:]
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif line == "" and "data" in event:
                yield event
                event = {}


async def test_stream_pushes_and_replays_after_last_event_id(http: httpx.AsyncClient) -> None:
    await publish(http, "n", "0")
    params = {"app": "shop", "namespace": "application"}
    seen: list[dict[str, Any]] = []
    stream = events(http, params)
    seen.append(await anext(stream))
    assert seen[0]["data"]["configurations"] == {"n": "0"}
    for i in range(1, 4):
        await publish(http, "n", str(i))
        seen.append(await asyncio.wait_for(anext(stream), 30))
    await stream.aclose()
    assert [e["data"]["configurations"]["n"] for e in seen] == ["0", "1", "2", "3"]
    last = seen[1]["id"]
    replay = events(http, params, {"Last-Event-ID": str(last)})
    again = [await asyncio.wait_for(anext(replay), 30) for _ in range(2)]
    await replay.aclose()
    assert [e["data"]["releaseKey"] for e in again] == ["shop-3", "shop-4"]  # every release after it, in order


async def test_reconnecting_watchers_miss_no_release(http: httpx.AsyncClient) -> None:
    """Watchers drop and reconnect (with Last-Event-ID) while 30 releases go out: each sees every
    release in order, none skipped, and ends on the latest."""
    await publish(http, "n", "0")
    params = {"app": "shop", "namespace": "application"}
    total = 31

    async def watcher(drop_every: int) -> list[int]:
        releases: list[int] = []
        last: int | None = None
        while not releases or releases[-1] < total:
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            received = 0
            async for event in events(http, params, headers):
                releases.append(int(event["data"]["releaseKey"].split("-")[1]))
                last = event["id"]
                received += 1
                if received == drop_every or releases[-1] >= total:
                    break  # disconnect; the next round reconnects from `last`
        return releases

    watchers = [asyncio.create_task(watcher(k)) for k in (1, 2, 3, 5)]
    await asyncio.sleep(0.05)
    for i in range(1, total):
        await publish(http, "n", str(i))
    results = await asyncio.wait_for(asyncio.gather(*watchers), 60)
    for releases in results:
        assert releases == list(range(1, total + 1))


async def test_publish_on_one_node_reaches_watchers_on_another(postgres_url: str, tmp_path: Path) -> None:
    one = await start_node(tmp_path / "one", store=postgres_url)
    two = await start_node(tmp_path / "two", store=postgres_url)
    try:
        headers = {"Authorization": f"Bearer {one.token}"}
        async with httpx.AsyncClient(base_url=one.url, headers=headers, timeout=30) as a, \
                httpx.AsyncClient(base_url=two.url, headers=headers, timeout=30) as b:
            await publish(a, "a", "1")
            nid = (await wait_for(lambda: _first(b, _notifications(-1))))
            waiting = asyncio.create_task(b.get("/v1/config/notifications", params=_notifications(nid)))
            await asyncio.sleep(0.05)
            await publish(a, "a", "2")
            r = await asyncio.wait_for(waiting, 30)
            assert r.status_code == 200
            assert (await b.get(f"{APP}/config")).json()["configurations"] == {"a": "2"}
    finally:
        await two.node.stop()
        await one.node.stop()


async def _first(http: httpx.AsyncClient, params: dict[str, str]) -> int | None:
    r = await http.get("/v1/config/notifications", params={**params, "timeout": "0"})
    return r.json()[0]["notificationId"] if r.status_code == 200 else None


@pytest.mark.slow
def test_killed_node_loses_no_published_release(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    node = spawn_node(data)
    headers = {"Authorization": f"Bearer {node.token}"}
    acked = 0
    with httpx.Client(base_url=node.url, headers=headers, timeout=30) as http:
        for i in range(20):
            http.put(f"{APP}/items/n", json={"value": str(i)})
            if http.post(f"{APP}:publish", json={}).status_code == 200:
                acked = i + 1
    stop_process(node, signal.SIGKILL)
    again = spawn_node(data)
    try:
        with httpx.Client(base_url=again.url, headers=headers, timeout=30) as http:
            history = http.get(f"{APP}/releases").json()["items"]
            assert len(history) == acked == 20
            assert http.get(f"{APP}/config").json()["configurations"] == {"n": "19"}
    finally:
        with contextlib.suppress(Exception):
            stop_process(again, signal.SIGKILL)


async def test_stream_ahead_of_the_store_gets_the_full_state(http: httpx.AsyncClient) -> None:
    """A client whose Last-Event-ID is newer than the store (a restored or wiped store) resyncs."""
    await publish(http, "a", "1")
    stream = events(http, {"app": "shop", "namespace": "application"}, {"Last-Event-ID": "999999999"})
    first = await asyncio.wait_for(anext(stream), 30)
    await stream.aclose()
    assert first["data"]["configurations"] == {"a": "1"} and first["data"]["resync"] is True


async def test_stopping_node_ends_long_polls_and_streams(cfg: RunningNode, http: httpx.AsyncClient) -> None:
    await publish(http, "a", "1")
    nid = (await http.get("/v1/config/notifications", params=_notifications(-1))).json()[0]["notificationId"]
    poll = asyncio.create_task(http.get("/v1/config/notifications", params=_notifications(nid)))
    await asyncio.sleep(0.05)
    cfg.node.stopping.set()  # what node.stop() does first: the poll answers instead of holding the drain
    r = await asyncio.wait_for(poll, 10)
    assert r.status_code == 304
