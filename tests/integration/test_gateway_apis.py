"""API lifecycle: OpenAPI import, draft → published → deprecated → retired, documentation pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from mezzo.gateway.runtime import Gateway
from mezzo.testing.fixtures import RunningNode, start_node, wait_for

PETSTORE = """
openapi: 3.0.3
info: {title: Pet Store, version: "1.2", description: Pets for everyone}
paths:
  /pets:
    get:
      operationId: listPets
      summary: List the pets
      parameters: [{name: limit, in: query, description: how many}]
      responses: {"200": {description: a page of pets}}
    post:
      operationId: createPet
      requestBody: {content: {application/json: {}}}
      responses: {"201": {description: created}}
  /pets/{petId}:
    get:
      operationId: showPet
      parameters: [{name: petId, in: path, required: true}]
      responses: {"200": {description: one pet}}
"""


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[RunningNode]:
    running = await start_node(tmp_path / "data", gateway_port=0)
    try:
        yield running
    finally:
        await running.node.stop()


async def _state(gw: RunningNode, http: httpx.AsyncClient, state: str) -> httpx.Response:
    r = await http.post("/v1/apis/petstore:transition", json={"state": state})
    if r.status_code == 200:
        revision = r.json()["revision"]
        await wait_for(lambda: gw.node.service(Gateway).snapshot.revision >= revision)
    return r


async def test_import_states_and_docs(gw: RunningNode) -> None:
    headers = {"Authorization": f"Bearer {gw.token}"}
    async with httpx.AsyncClient(base_url=gw.url, headers=headers) as http, \
            httpx.AsyncClient(base_url=gw.node.url("gateway")) as client:
        r = await http.post("/v1/apis:import", json={
            "name": "petstore", "document": PETSTORE, "upstream": "pets", "basePath": "/shop",
            "plugins": {"mocking": {"body": {"ok": True}}}})
        assert r.status_code == 200, r.text
        assert r.json()["operations"] == 3 and r.json()["action"] == "created"
        revision = r.json()["revision"]
        await wait_for(lambda: gw.node.service(Gateway).snapshot.revision >= revision)
        assert (await client.get("/shop/pets")).status_code == 404  # a draft is not served
        assert (await http.get("/v1/apis/petstore/docs")).status_code == 404

        assert (await _state(gw, http, "published")).status_code == 200
        assert (await client.get("/shop/pets")).json() == {"ok": True}
        assert (await client.get("/shop/pets/7")).status_code == 200
        assert (await client.delete("/shop/pets/7")).status_code == 404  # not an operation of the API
        page = await http.get("/v1/apis/petstore/docs")
        assert page.status_code == 200 and "Pet Store" in page.text and "/shop/pets/{petId}" in page.text
        spec = (await http.get("/v1/apis/petstore/openapi.json")).json()
        assert spec["servers"][0]["url"].endswith("/shop") and spec["info"]["version"] == "1.2"

        assert (await _state(gw, http, "deprecated")).status_code == 200
        r = await client.get("/shop/pets")
        assert r.status_code == 200 and r.headers["deprecation"] == "true"

        assert (await _state(gw, http, "retired")).status_code == 200
        r = await client.get("/shop/pets")
        assert r.status_code == 410
        assert (await _state(gw, http, "published")).status_code == 409  # retired is final
        assert (await http.get("/v1/apis/petstore/docs")).status_code == 404


async def test_bad_documents_are_rejected(gw: RunningNode) -> None:
    headers = {"Authorization": f"Bearer {gw.token}"}
    async with httpx.AsyncClient(base_url=gw.url, headers=headers) as http:
        swagger = await http.post("/v1/apis:import", json={
            "name": "old", "document": {"swagger": "2.0", "paths": {"/a": {"get": {}}}}, "upstream": "x"})
        assert swagger.status_code == 400 and "3.x" in swagger.text
        broken = await http.post("/v1/apis:import", json={"name": "bad", "document": "a: [1\n", "upstream": "x"})
        assert broken.status_code == 400 and broken.json()["errors"][0]["field"] == "document"
        empty = await http.post("/v1/apis:import", json={
            "name": "empty", "document": {"openapi": "3.1.0", "paths": {}}, "upstream": "x"})
        assert empty.status_code == 400
        assert (await http.post("/v1/apis/missing:transition", json={"state": "published"})).status_code == 404
