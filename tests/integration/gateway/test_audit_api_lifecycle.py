"""Audit: the API lifecycle beyond the main path — every allowed and refused move, a re-import that
changes the operations, a deleted API, templated and static paths, and the documentation page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from mezzo.gateway.http import Request
from mezzo.resources.service import ResourceService
from mezzo.testing.fixtures import wait_for

from . import core_fixtures
from .core_fixtures import GatewayNode, start_gateway, upstream

origins = core_fixtures.origins  # fixture


def document(*paths: str, title: str = "Shop") -> dict[str, Any]:
    return {"openapi": "3.0.3", "info": {"title": title, "version": "1"},
            "paths": {p: {"get": {"operationId": "get" + p.replace("/", "_").replace("{", "").replace("}", ""),
                                  "summary": f"read {p}", "responses": {"200": {"description": "ok"}}}}
                      for p in paths}}


@pytest.fixture
async def gwa(tmp_path: Path) -> AsyncIterator[GatewayNode]:
    """A node running the gateway, the API lifecycle module and the API."""
    node = await start_gateway(tmp_path / "data", targets=["gateway", "apis", "api"])
    try:
        yield node
    finally:
        await node.running.node.stop()


@pytest.fixture
async def admin(gwa: GatewayNode) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {gwa.running.token}"}
    async with httpx.AsyncClient(base_url=gwa.running.url, headers=headers) as client:
        yield client


async def _settled(gwa: GatewayNode, r: httpx.Response) -> httpx.Response:
    """Wait until the gateway serves what an accepted import or transition wrote."""
    if r.status_code == 200:
        revision = r.json()["revision"]
        await wait_for(lambda: gwa.gateway.snapshot.revision >= revision and gwa.gateway._rebuild is None)
    return r


async def _import(gwa: GatewayNode, admin: httpx.AsyncClient, doc: dict[str, Any] | str, **body: Any) -> httpx.Response:
    return await _settled(gwa, await admin.post("/v1/apis:import", json={
        "name": "shop", "document": doc, "upstream": "up", **body}))


async def _move(gwa: GatewayNode, admin: httpx.AsyncClient, state: str) -> httpx.Response:
    return await _settled(gwa, await admin.post("/v1/apis/shop:transition", json={"state": state}))


async def test_every_move_and_what_each_state_serves(gwa: GatewayNode, admin: httpx.AsyncClient, origins) -> None:
    (a,) = await origins(1)
    await gwa.apply(upstream("up", a))
    async with httpx.AsyncClient(base_url=gwa.url) as http:
        assert (await _import(gwa, admin, document("/items"), basePath="/v1")).status_code == 200
        assert (await http.get("/v1/items")).status_code == 404  # draft

        r = await _move(gwa, admin, "deprecated")  # draft → deprecated is not a move
        assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
        r = await _move(gwa, admin, "gone")
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "state"

        assert (await _move(gwa, admin, "published")).status_code == 200
        r = await http.get("/v1/items")
        assert r.status_code == 200 and r.json()["path"] == "/v1/items" and "deprecation" not in r.headers
        assert (await _move(gwa, admin, "published")).status_code == 200  # staying put is fine

        assert (await _move(gwa, admin, "deprecated")).status_code == 200
        r = await http.get("/v1/items")
        assert r.status_code == 200 and r.headers["deprecation"] == "true"
        page = await admin.get("/v1/apis/shop/docs")
        assert page.status_code == 200 and "deprecated" in page.text

        assert (await _move(gwa, admin, "published")).status_code == 200  # deprecated → published again
        r = await http.get("/v1/items")
        assert r.status_code == 200 and "deprecation" not in r.headers

        assert (await _move(gwa, admin, "retired")).status_code == 200  # published → retired directly
        r = await http.get("/v1/items")
        assert r.status_code == 410 and r.headers["content-type"] == "application/problem+json"
        assert "shop" in r.json()["detail"]
        for state in ("draft", "published", "deprecated"):
            assert (await _move(gwa, admin, state)).status_code == 409


async def test_a_draft_may_be_retired_without_being_published(gwa: GatewayNode, admin: httpx.AsyncClient,
                                                               origins) -> None:
    (a,) = await origins(1)
    await gwa.apply(upstream("up", a))
    await _import(gwa, admin, document("/items"))
    assert (await _move(gwa, admin, "retired")).status_code == 200
    async with httpx.AsyncClient(base_url=gwa.url) as http:
        assert (await http.get("/items")).status_code == 410
    assert (await admin.get("/v1/apis/shop/docs")).status_code == 404
    assert a.requests == 0


async def test_reimport_changes_the_routes_and_delete_removes_them(gwa: GatewayNode, admin: httpx.AsyncClient,
                                                                    origins) -> None:
    (a,) = await origins(1)
    await gwa.apply(upstream("up", a))
    async with httpx.AsyncClient(base_url=gwa.url) as http:
        await _import(gwa, admin, document("/old", "/kept"), state="published")
        assert [(await http.get(p)).status_code for p in ("/old", "/kept", "/new")] == [200, 200, 404]
        # the same API imported again, as JSON text this time, with one operation gone and one new
        r = await _import(gwa, admin, orjson.dumps(document("/kept", "/new")).decode(), state="published")
        assert r.status_code == 200 and r.json()["operations"] == 2
        assert [(await http.get(p)).status_code for p in ("/old", "/kept", "/new")] == [404, 200, 200]

        resources = gwa.running.node.service(ResourceService)
        await resources.delete("Api", "default", "shop", "test")
        await wait_for(lambda: not any(ref.startswith("default/shop:") for ref in gwa.gateway.items["Route"]))
        assert [(await http.get(p)).status_code for p in ("/kept", "/new")] == [404, 404]


async def test_static_paths_win_over_templated_ones(gwa: GatewayNode, admin: httpx.AsyncClient, origins) -> None:
    (a,) = await origins(1)
    await gwa.apply(upstream("up", a))
    doc = document("/pets/{petId}", "/pets/mine")
    doc["paths"]["/pets/mine"]["get"]["operationId"] = "mine"
    await _import(gwa, admin, doc, state="published", plugins={
        "proxy-rewrite": {"headers": {"set": {"x-api": "shop"}}}})
    names = sorted(ref for ref in gwa.gateway.items["Route"] if ref.startswith("default/shop:"))
    assert names == ["default/shop:get_pets_petId", "default/shop:mine"]
    async with httpx.AsyncClient(base_url=gwa.url) as http:
        r = await http.get("/pets/mine")
        assert r.status_code == 200 and r.json()["headers"]["x-api"] == "shop"  # the API's plugins run
        router = gwa.gateway.snapshot.router
        assert [router.match(_request(p))[0].name for p in ("/pets/mine", "/pets/7")] == \
            ["shop:mine", "shop:get_pets_petId"]  # type: ignore[index]
        assert (await http.get("/pets/7/more")).status_code == 404


def _request(path: str) -> Request:
    request = Request("GET", path.encode(), [(b"host", b"gw")], "127.0.0.1", "1.1", True)
    request.host = "gw"
    return request


async def test_the_documentation_page_and_document(gwa: GatewayNode, admin: httpx.AsyncClient, origins) -> None:
    (a,) = await origins(1)
    await gwa.apply(upstream("up", a))
    doc = document("/items", title="Items <script>")
    doc["paths"]["/items"]["get"]["parameters"] = [{"name": "limit", "in": "query", "description": "how many"}]
    await _import(gwa, admin, doc, basePath="/api", state="published")
    page = await admin.get("/v1/apis/shop/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Items &lt;script&gt;" in page.text and "<script>" not in page.text  # escaped
    assert "/api/items" in page.text and "limit" in page.text and "how many" in page.text
    openapi = (await admin.get("/v1/apis/shop/openapi.json")).json()
    assert openapi["servers"] == [{"url": gwa.url + "/api"}] and "/items" in openapi["paths"]
    assert (await admin.get("/v1/apis/nothing/docs")).status_code == 404
    async with httpx.AsyncClient(base_url=gwa.running.url) as anonymous:
        assert (await anonymous.get("/v1/apis/shop/docs")).status_code == 401
