"""Audit of push against the issue: Apollo's long-poll protocol as Apollo clients speak it, several
namespaces per watch, gray rules reaching watchers without a publish, secrets on the stream masked
per token, ``since`` replays, and bad polls refused."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from conformance.config.test_push import events, publish
from conformance.config.test_releases import field

NS = "/v1/config/apps/shop/envs/default/clusters/default/namespaces"
APP = f"{NS}/application"
POLL = "/v1/config/notifications"


def apollo(ids: dict[str, int], **extra: str) -> dict[str, str]:
    """The query an Apollo client sends to ``/notifications/v2`` (appId, cluster, notifications, ip)."""
    notifications = [{"namespaceName": name, "notificationId": nid} for name, nid in ids.items()]
    return {"appId": "shop", "cluster": "default", "notifications": json.dumps(notifications), **extra}


async def test_apollo_long_poll_protocol_as_apollo_clients_speak_it(http: httpx.AsyncClient) -> None:
    await publish(http, "a", "1")
    await publish(http, "b", "1", path=f"{NS}/FX.apollo")
    ids = {"application": -1, "FX.apollo": -1}
    r = await http.get(POLL, params=apollo(ids, ip="10.1.2.3", dataCenter="dc1"))
    assert r.status_code == 200, r.text
    for item in r.json():  # what an Apollo client reads: namespaceName and notificationId
        assert isinstance(item["notificationId"], int) and item["notificationId"] > 0
        ids[item["namespaceName"]] = item["notificationId"]
    assert set(ids) == {"application", "FX.apollo"} and min(ids.values()) > 0
    # then it reads each namespace that changed, and polls again with the ids it now holds
    for name in ids:
        got = (await http.get(f"{NS}/{name}/config")).json()
        assert got["notificationId"] == ids[name]
    held = await http.get(POLL, params=apollo(ids, timeout="0.2"))
    assert held.status_code == 304 and held.content == b""
    waiting = asyncio.create_task(http.get(POLL, params=apollo(ids)))
    await asyncio.sleep(0.05)  # let the poll park (no timing is asserted)
    await publish(http, "b", "2", path=f"{NS}/FX.apollo")
    r = await asyncio.wait_for(waiting, 30)
    assert r.status_code == 200
    [changed] = r.json()  # only the namespace that changed
    assert changed["namespaceName"] == "FX.apollo" and changed["notificationId"] > ids["FX.apollo"]


async def test_bad_polls_are_refused_with_the_field(http: httpx.AsyncClient) -> None:
    r = await http.get(POLL, params={"app": "shop", "notifications": "[]", "timeout": "0.1"})
    assert r.status_code == 400 and field(r) == "notifications"  # a poll watching nothing never ends usefully
    r = await http.get(POLL, params={"app": "shop", "timeout": "61",
                                     "notifications": json.dumps([{"namespaceName": "application"}])})
    assert r.status_code == 400 and field(r) == "timeout"  # held at most 60 s
    r = await http.get(POLL, params={"notifications": json.dumps([{"namespaceName": "application"}])})
    assert r.status_code == 400 and field(r) == "app"


async def test_gray_rules_reach_watchers_without_a_publish(http: httpx.AsyncClient) -> None:
    await publish(http, "timeout", "1s")
    await http.put(f"{APP}/gray")
    await http.put(f"{APP}/gray/items/timeout", json={"value": "5s"})
    await http.post(f"{APP}/gray:publish")  # no rule yet: nobody gets it
    stream = events(http, {"app": "shop", "namespace": "application", "label": "canary=true"})
    try:
        first = await asyncio.wait_for(anext(stream), 30)
        assert first["data"]["configurations"] == {"timeout": "1s"}
        nid = (await http.get(f"{APP}/config")).json()["notificationId"]
        poll = asyncio.create_task(http.get(POLL, params={"app": "shop", "notifications": json.dumps(
            [{"namespaceName": "application", "notificationId": nid}])}))
        await asyncio.sleep(0.05)
        await http.put(f"{APP}/gray/rules", json={"rules": [{"labels": {"canary": "true"}}]})
        gray = await asyncio.wait_for(anext(stream), 30)
        assert gray["data"]["configurations"] == {"timeout": "5s"} and gray["id"] > first["id"]
        answered = await asyncio.wait_for(poll, 30)
        assert answered.status_code == 200 and answered.json()[0]["notificationId"] > nid
        assert (await http.delete(f"{APP}/gray")).status_code == 204  # abandon: back to the main release
        back = await asyncio.wait_for(anext(stream), 30)
        assert back["data"]["configurations"] == {"timeout": "1s"} and back["id"] > gray["id"]
    finally:
        await stream.aclose()


async def test_one_stream_watches_several_namespaces_with_secrets_masked_per_token(
        http: httpx.AsyncClient, login) -> None:  # type: ignore[no-untyped-def]
    await http.put(f"{APP}/items/db.password", json={"value": "hunter2", "secret": True})
    await http.post(f"{APP}:publish", json={})
    await publish(http, "flag", "off", path=f"{NS}/features")
    params = {"app": "shop", "namespace": ["application", "features"]}
    async with await login("watcher", "viewer") as viewer, await login("svc", "developer") as svc:
        masked, clear = events(viewer, params), events(svc, params)
        try:
            seen: dict[str, list[dict[str, Any]]] = {"viewer": [], "svc": []}
            for who, stream in (("viewer", masked), ("svc", clear)):
                for _ in range(2):
                    seen[who].append((await asyncio.wait_for(anext(stream), 30))["data"])
            await http.put(f"{APP}/items/db.password", json={"value": "hunter3"})
            await http.post(f"{APP}:publish", json={})
            await publish(http, "flag", "on", path=f"{NS}/features")
            for who, stream in (("viewer", masked), ("svc", clear)):
                for _ in range(2):
                    seen[who].append((await asyncio.wait_for(anext(stream), 30))["data"])
        finally:
            await masked.aclose()
            await clear.aclose()
    for who, password in (("viewer", ["******", "******"]), ("svc", ["hunter2", "hunter3"])):
        got = seen[who]
        assert [d["configurations"]["db.password"] for d in got if d["namespace"] == "application"] == password
        assert [d["configurations"]["flag"] for d in got if d["namespace"] == "features"] == ["off", "on"]


async def test_since_replays_like_last_event_id(http: httpx.AsyncClient) -> None:
    await publish(http, "n", "1")
    since = (await http.get(f"{APP}/config")).json()["notificationId"]
    for value in ("2", "3"):
        await publish(http, "n", value)
    stream = events(http, {"app": "shop", "namespace": "application", "since": str(since)})
    try:
        replayed = [await asyncio.wait_for(anext(stream), 30) for _ in range(2)]
    finally:
        await stream.aclose()
    assert [e["data"]["configurations"]["n"] for e in replayed] == ["2", "3"]
    assert "resync" not in replayed[0]["data"]
