"""request-id: an id per request (the client's kept), sent upstream in one header and returned once."""

from __future__ import annotations

import re

import httpx
import pytest

from mezzo.sdk.errors import MezzoError

from . import recording_upstream
from .conftest import EchoServer, GatewayHandle, consumer_doc, route_doc, upstream_doc
from .recording_upstream import RecordingUpstream

recording = recording_upstream.recording  # fixture


async def test_an_id_per_request_upstream_and_back(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"request-id": {}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        seen = set()
        for _ in range(3):
            r = await http.get("/x")
            sent = r.json()["headers"]["x-request-id"]
            assert re.fullmatch(r"[0-9a-f]{32}", sent) and r.headers["x-request-id"] == sent
            seen.add(sent)
        assert len(seen) == 3

        r = await http.get("/x", headers={"X-Request-Id": "client-chosen-1"})  # the client's id is kept
        assert r.json()["headers"]["x-request-id"] == "client-chosen-1"
        assert r.headers.get_list("x-request-id") == ["client-chosen-1"]


async def test_header_name_and_include_in_response(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream),
                        route_doc("a", ["/a"], plugins={"request-id": {"headerName": "X-Correlation-Id"}}),
                        route_doc("b", ["/b"], plugins={"request-id": {"include_in_response": False}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/a")
        sent = r.json()["headers"]["x-correlation-id"]
        assert r.headers["x-correlation-id"] == sent and "x-request-id" not in r.json()["headers"]
        r = await http.get("/a", headers={"x-correlation-id": "abc"})
        assert r.json()["headers"]["x-correlation-id"] == "abc" and r.headers["x-correlation-id"] == "abc"

        r = await http.get("/b")
        assert r.json()["headers"]["x-request-id"] and "x-request-id" not in r.headers


async def test_the_gateways_own_answers_carry_the_id(gateway: GatewayHandle, upstream: EchoServer) -> None:
    await gateway.apply(upstream_doc("up", upstream), consumer_doc("alice", {"key-auth": {"key": "ka"}}),
                        route_doc("r", ["/*"], plugins={"request-id": {}, "key-auth": {}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x")
        assert r.status_code == 401 and re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
        r = await http.get("/x", headers={"x-request-id": "trace-me"})
        assert r.status_code == 401 and r.headers["x-request-id"] == "trace-me"


async def test_an_empty_client_id_is_replaced_not_doubled(gateway: GatewayHandle, recording) -> None:
    node: RecordingUpstream = await recording()
    await gateway.apply({"kind": "Upstream", "metadata": {"name": "up"},
                         "spec": {"nodes": [{"host": "127.0.0.1", "port": node.port}]}},
                        route_doc("r", ["/*"], plugins={"request-id": {}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x", headers={"x-request-id": ""})
    (sent,) = node.heads[-1].all("x-request-id")  # one header upstream, not the empty one and a new one
    assert re.fullmatch(r"[0-9a-f]{32}", sent) and r.headers.get_list("x-request-id") == [sent]


async def test_an_id_the_upstream_returns_is_not_doubled(gateway: GatewayHandle, recording) -> None:
    """An upstream that returns the header itself (many frameworks echo it) keeps its own, as in APISIX:
    the client never gets two."""
    node: RecordingUpstream = await recording(b"x-request-id: from-upstream\r\n")
    await gateway.apply({"kind": "Upstream", "metadata": {"name": "up"},
                         "spec": {"nodes": [{"host": "127.0.0.1", "port": node.port}]}},
                        route_doc("r", ["/*"], plugins={"request-id": {}}))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get("/x")
        assert r.headers.get_list("x-request-id") == ["from-upstream"]
        assert node.heads[-1].all("x-request-id") != ["from-upstream"]  # the gateway's id went upstream


async def test_bad_configurations_are_refused_at_apply(gateway: GatewayHandle, upstream: EchoServer) -> None:
    for conf in ({"headerName": ""}, {"headerName": "X Request Id"}, {"headerName": "X-Id:\r\nSet-Cookie"},
                 {"includeInResponse": "sometimes"}, {"algorithm": "nanoid"}):
        with pytest.raises(MezzoError, match="plugin request-id"):
            await gateway.apply(upstream_doc("up", upstream), route_doc("r", ["/*"], plugins={"request-id": conf}))
