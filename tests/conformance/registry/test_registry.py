"""Registering, listing and deregistering over HTTP; validation; access; audit."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import SVC, audit, ids, listed, register


async def test_register_list_get_deregister(http: httpx.AsyncClient) -> None:
    first = await register(http, "orders", expect=201, host="10.0.0.1", port=8080)
    assert first["id"] == "10.0.0.1:8080" and first["status"] == "passing"  # derived from host:port
    assert first["weight"] == 1.0 and "expiresAt" not in first  # no TTL: stays until deregistered
    second = await register(http, "orders", expect=201, id="orders-b", host="Orders-B.internal", port=9090,
                            weight=3, zone="eu-1a", version="2.1.0", tags=["canary"], metadata={"team": "core"})
    assert second["host"] == "orders-b.internal"  # host names are case-insensitive: kept lowercase
    await register(http, "billing", host="10.0.0.9", port=80)

    body = await listed(http, "orders")
    assert [i["id"] for i in body["instances"]] == ["10.0.0.1:8080", "orders-b"]
    got = body["instances"][1]
    assert (got["weight"], got["zone"], got["version"], got["tags"], got["metadata"]) == \
        (3.0, "eu-1a", "2.1.0", ["canary"], {"team": "core"})
    one = await http.get(f"{SVC}/orders/instances/orders-b")
    assert one.status_code == 200 and one.json()["registeredBy"] == "admin"
    services = (await http.get("/v1/registry/services")).json()["items"]
    assert [(s["name"], s["instances"], s["passing"]) for s in services] == [("billing", 1, 1), ("orders", 2, 2)]

    assert (await http.delete(f"{SVC}/orders/instances/10.0.0.1:8080")).status_code == 204
    assert await ids(http, "orders") == ["orders-b"]
    r = await http.delete(f"{SVC}/orders/instances/10.0.0.1:8080")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert (await http.get(f"{SVC}/orders/instances/10.0.0.1:8080")).status_code == 404
    assert (await listed(http, "nothing-here"))["instances"] == []

    actions = [(a["action"], a["name"]) for a in await audit(http)]
    assert ("registry.register", "orders/orders-b") in actions
    assert ("registry.deregister", "orders/10.0.0.1:8080") in actions


async def test_registering_again_is_idempotent_and_changes_replace(http: httpx.AsyncClient) -> None:
    spec = {"host": "10.0.0.1", "port": 8080, "metadata": {"v": "1"}}
    await register(http, "orders", expect=201, **spec)
    index = (await listed(http, "orders"))["index"]
    await register(http, "orders", expect=200, **spec)  # the same again: nothing changes
    assert (await listed(http, "orders"))["index"] == index
    assert len(await audit(http, "registry.register")) == 1
    changed = await register(http, "orders", expect=200, **{**spec, "metadata": {"v": "2"}})
    assert changed["metadata"] == {"v": "2"}
    assert (await listed(http, "orders"))["index"] > index
    assert len(await audit(http, "registry.register")) == 2
    assert await ids(http, "orders") == ["10.0.0.1:8080"]


async def test_register_with_the_id_in_the_path(http: httpx.AsyncClient) -> None:
    r = await http.put(f"{SVC}/orders/instances/web-1", json={"host": "::1", "port": 80})
    assert r.status_code == 201 and r.json()["id"] == "web-1" and r.json()["host"] == "::1"
    r = await http.put(f"{SVC}/orders/instances/web-1", json={"id": "web-2", "host": "::1", "port": 80})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "id"
    r = await http.put(f"{SVC}/orders/instances", json={"host": "[::1]", "port": 81})
    assert r.json()["id"] == "[::1]:81"  # IPv6 in brackets, as in a URL
    assert (await http.get(f"{SVC}/orders/instances/[::1]:81")).status_code == 200
    assert sorted(await ids(http, "orders")) == ["[::1]:81", "web-1"]


BAD: list[tuple[dict[str, Any], str]] = [
    ({"host": "10.0.0.1"}, "port"),
    ({"host": "10.0.0.1", "port": 0}, "port"),
    ({"host": "10.0.0.1", "port": 70000}, "port"),
    ({"host": "not a host", "port": 80}, "host"),
    ({"host": "a/b", "port": 80}, "host"),
    ({"port": 80}, "host"),
    ({"host": "h", "port": 80, "ttl": "0s"}, "ttl"),
    ({"host": "h", "port": 80, "ttl": "soon"}, "ttl"),
    ({"host": "h", "port": 80, "ttl": "500ms"}, "ttl"),
    ({"host": "h", "port": 80, "ttl": "2d"}, "ttl"),
    ({"host": "h", "port": 80, "weight": -1}, "weight"),
    ({"host": "h", "port": 80, "id": "a/b"}, "id"),
    ({"host": "h", "port": 80, "zone": "eu west"}, "zone"),
    ({"host": "h", "port": 80, "metadata": {f"k{i}": "v" for i in range(65)}}, "metadata"),
    ({"host": "h", "port": 80, "metadata": {"k": "v" * 2000}}, "metadata"),
    ({"host": "h", "port": 80, "check": {"http": "/health", "tcp": True}}, "check"),
    ({"host": "h", "port": 80, "check": {}}, "check"),
    ({"host": "h", "port": 80, "check": {"http": "health"}}, "check.http"),
    ({"host": "h", "port": 80, "check": {"tcp": True, "interval": "0s"}}, "check.interval"),
    ({"host": "h", "port": 80, "check": {"tcp": True, "failures": 0}}, "check.failures"),
    ({"host": "h", "port": 80, "unknown": 1}, "unknown"),
]


@pytest.mark.parametrize(("body", "field"), BAD, ids=[f for _, f in BAD])
async def test_bad_registrations_are_refused_with_the_field(http: httpx.AsyncClient, body: dict[str, Any],
                                                            field: str) -> None:
    r = await http.put(f"{SVC}/orders/instances", json=body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in r.json()["errors"]], r.json()
    assert (await listed(http, "orders"))["instances"] == []  # nothing half-written
    if field == "ttl" and body["ttl"] != "soon":
        assert "a TTL is from 1s to 24h" in r.text  # the bounds with their unit


async def test_bad_requests_elsewhere(http: httpx.AsyncClient) -> None:
    body = {"host": "h", "port": 80}
    cases = [
        (await http.put(f"{SVC}/-orders/instances", json=body), "service"),
        (await http.put(f"{SVC}/orders/instances", json=body, params={"namespace": "Not_A_Namespace"}), "namespace"),
        (await http.put(f"{SVC}/orders/instances", content=b"{not json", headers={"content-type": "application/json"}),
         None),
        (await http.get(f"{SVC}/orders/instances", params={"index": 1, "wait": "forever"}), "wait"),
        (await http.get(f"{SVC}/orders/instances", params={"index": 1, "wait": "1h"}), "wait"),
        (await http.get(f"{SVC}/orders/instances", params={"index": -1}), "index"),
    ]
    for r, field in cases:
        assert r.status_code == 400, r.text
        if field:
            assert field in [e["field"] for e in r.json()["errors"]], r.json()


async def test_heartbeats(http: httpx.AsyncClient) -> None:
    r = await http.post(f"{SVC}/orders/instances/nope:heartbeat")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    await register(http, "orders", id="plain", host="h", port=80)
    r = await http.post(f"{SVC}/orders/instances/plain:heartbeat")
    assert r.status_code == 200 and r.json()["expiresAt"] is None  # no TTL: nothing to renew
    await register(http, "orders", host="10.1.1.1", port=80, ttl="1m")
    r = await http.post(f"{SVC}/orders/instances/10.1.1.1:80:heartbeat")
    assert r.status_code == 200 and r.json()["expiresAt"]


async def test_filters(http: httpx.AsyncClient) -> None:
    await register(http, "orders", id="a", host="h", port=1, zone="z1", tags=["blue"])
    await register(http, "orders", id="b", host="h", port=2, zone="z2", tags=["green"])
    await register(http, "orders", id="c", host="h", port=3, zone="z1", check={"tcp": True, "interval": "1h",
                                                                                "timeout": "1s"})
    assert await ids(http, "orders", zone="z1") == ["a", "c"]
    assert await ids(http, "orders", tag="green") == ["b"]
    assert await ids(http, "orders", healthy="true") == ["a", "b"]  # c starts critical until its check passes
    assert await ids(http, "orders", healthy="true", zone="z1") == ["a"]


async def test_namespaces_are_tenants(http: httpx.AsyncClient, login) -> None:  # type: ignore[no-untyped-def]
    await register(http, "orders", host="h", port=1)
    await register(http, "orders", namespace="team-a", host="h", port=2)
    assert await ids(http, "orders") == ["h:1"]
    assert await ids(http, "orders", namespace="team-a") == ["h:2"]
    async with await login("dashboards", "viewer") as viewer:
        assert (await viewer.get(f"{SVC}/orders/instances")).status_code == 200
        r = await viewer.put(f"{SVC}/orders/instances", json={"host": "h", "port": 3})
        assert r.status_code == 403
        assert (await viewer.delete(f"{SVC}/orders/instances/h:1")).status_code == 403
    async with await login("team-a-app", "developer", ["team-a"]) as app:
        r = await app.put(f"{SVC}/orders/instances", json={"host": "h", "port": 4}, params={"namespace": "team-a"})
        assert r.status_code == 201
        assert (await app.post(f"{SVC}/orders/instances/h:4:heartbeat", params={"namespace": "team-a"})).status_code == 200
        assert (await app.put(f"{SVC}/orders/instances", json={"host": "h", "port": 5})).status_code == 403
        assert (await app.get(f"{SVC}/orders/instances")).status_code == 403
    assert (await http.get(f"{SVC}/orders/instances", headers={"Authorization": "Bearer nope"})).status_code == 401
