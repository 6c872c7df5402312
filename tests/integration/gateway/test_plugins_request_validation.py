"""request-validation: JSON Schema for bodies, headers and query arguments; 400 naming the failing place."""

from __future__ import annotations

import httpx
import pytest

from mezzo.sdk.errors import MezzoError

from .conftest import EchoServer, GatewayHandle, route_doc, upstream_doc

ORDER = {
    "type": "object",
    "required": ["customer", "items"],
    "properties": {
        "customer": {"type": "string", "minLength": 1},
        "email": {"type": "string", "format": "email"},
        "items": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["sku", "qty"],
            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}}},
    },
}


async def test_body_schema(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream),
                        route_doc("r", ["/orders"], plugins={"request-validation": {"bodySchema": ORDER}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        good = {"customer": "c1", "items": [{"sku": "a", "qty": 2}]}
        r = await http.post("/orders", json=good)
        assert r.status_code == 200 and r.json()["body"]  # the body still reaches the upstream

        r = await http.post("/orders", json={"customer": "c1", "items": [{"sku": "a", "qty": 0}]})
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["errors"][0]["path"] == "/items/0/qty" and problem["errors"][0]["in"] == "body"
        assert "/items/0/qty" in problem["detail"]

        r = await http.post("/orders", json={"customer": "c1", "items": [{"qty": 1}]})
        assert r.status_code == 400 and r.json()["errors"][0]["path"] == "/items/0/sku"
        r = await http.post("/orders", json={"items": [], "email": "not-an-email"})
        paths = {e["path"] for e in r.json()["errors"]}
        assert r.status_code == 400 and {"/customer", "/items", "/email"} <= paths
        r = await http.post("/orders", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
        r = await http.post("/orders")
        assert r.status_code == 400 and "empty" in r.json()["detail"]


async def test_form_body_headers_and_query(gateway: GatewayHandle, upstream: EchoServer) -> None:
    plugins = {"request-validation": {
        "bodySchema": {"type": "object", "required": ["name"], "properties": {"name": {"pattern": "^[a-z]+$"}}},
        "headerSchema": {"type": "object", "required": ["x-tenant"], "properties": {"x-tenant": {"enum": ["t1", "t2"]}}},
        "querySchema": {"type": "object", "properties": {"page": {"pattern": "^[0-9]+$"}}},
        "rejectedCode": 422}}
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins=plugins))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        ok = {"x-tenant": "t1"}
        assert (await http.post("/f", data={"name": "abc"}, headers=ok, params={"page": "2"})).status_code == 200
        r = await http.post("/f", data={"name": "ABC"}, headers=ok)
        assert r.status_code == 422 and r.json()["errors"][0] == {
            "in": "body", "path": "/name", "message": r.json()["errors"][0]["message"]}
        r = await http.post("/f", data={"name": "abc"})
        assert r.status_code == 422 and r.json()["errors"][0]["in"] == "header"
        assert r.json()["errors"][0]["path"] == "x-tenant"
        r = await http.post("/f", data={"name": "abc"}, headers={"x-tenant": "t9"})
        assert r.status_code == 422 and r.json()["errors"][0]["path"] == "x-tenant"
        r = await http.post("/f", data={"name": "abc"}, headers=ok, params={"page": "two"})
        assert r.status_code == 422 and r.json()["errors"][0] == {
            "in": "query", "path": "page", "message": r.json()["errors"][0]["message"]}


async def test_bad_schemas_are_refused_at_apply(gateway: GatewayHandle, upstream: EchoServer) -> None:
    with pytest.raises(MezzoError, match="JSON Schema"):
        await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={
            "request-validation": {"bodySchema": {"type": "no-such-type"}}}))
    with pytest.raises(MezzoError):
        await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"request-validation": {}}))
