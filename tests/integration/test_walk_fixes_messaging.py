"""What the walkthrough of docs/messaging.md found in error answers: a trace 404 said "not found"
twice; whole-message publish checks named no field and kept pydantic's "Value error, "; a bad seek
target gave four errors named after internal union members; a malformed receipt was a 409 "not in
flight"; a WebSocket command that is not JSON got the parser's message; a Dapr call without a token
was told about bearer tokens only; a CloudEvent without specversion was told it "must be 1.0"."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
import websockets

from mezzo.testing.fixtures import RunningNode

PROBLEMS = "https://mezzo.dev/problems/"
SEEK_HELP = "to is earliest, latest, an offset, {partition: offset} or an RFC 3339 time"
COMMAND = 'a command is a JSON object: {"ack": [receipts]} or {"nack": [receipts], "delay": "5s"}'


def _http(node: RunningNode, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}", **headers},
                             timeout=30)


def _bad_request(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["type"] == PROBLEMS + "invalid-request", body
    return body


async def test_a_message_without_a_trace_is_one_sentence(node: RunningNode) -> None:
    async with _http(node) as http:
        r = await http.get("/v1/messages/m-1:trace")
        assert r.status_code == 404, r.text
        body = r.json()
        assert body["type"] == PROBLEMS + "not-found"
        assert body["detail"] == "no trace of message 'm-1': only topics with trace on record one"
        assert "not found" not in body["detail"]
        assert (await http.get("/v1/messages/m-1:trace", params={"topic": "orders"})).json()["detail"] == body["detail"]


@pytest.mark.parametrize(("message", "field", "reason"), [
    ({"data": 1, "dataBase64": "aGk="}, "dataBase64", "give data or dataBase64, not both"),
    ({"delay": "30s", "deliverAt": "2030-01-01T00:00:00Z"}, "deliverAt", "give delay or deliverAt, not both"),
    ({"dataBase64": "not base64!"}, "dataBase64", "not valid base64 (RFC 4648, with padding)"),
])
async def test_whole_message_checks_name_their_field(node: RunningNode, message: dict[str, Any], field: str,
                                                     reason: str) -> None:
    async with _http(node) as http:
        one = _bad_request(await http.post("/v1/topics/walk:publish", json=message))
        assert one["errors"] == [{"field": field, "reason": reason}]
        assert one["detail"] == f"{field}: {reason}"
        batch = _bad_request(await http.post("/v1/topics/walk:publish", json={"messages": [{"data": 0}, message]}))
        assert batch["errors"] == [{"field": f"messages[1].{field}", "reason": reason}]
        prepared = await http.post("/v1/topics/walk:prepare", json={"messages": [message]})  # FastAPI's own check
        assert prepared.status_code == 400, prepared.text
        assert prepared.json()["errors"][0]["field"] == f"messages.0.{field}"
        assert prepared.json()["errors"][0]["reason"] == reason
        listed = (await http.get("/v1/topics")).json()["items"]
        assert not any(t["name"] == "walk" and t["messages"] for t in listed)  # nothing was published


async def test_raw_body_options_and_field_checks_lose_the_value_error_prefix(node: RunningNode) -> None:
    async with _http(node) as http:
        both = _bad_request(await http.post("/v1/topics/walk:publish", content=b"x",
                                            params={"delay": "1s", "deliverAt": "2030-01-01T00:00:00Z"},
                                            headers={"content-type": "text/plain"}))
        assert both["errors"] == [{"field": "deliverAt", "reason": "give delay or deliverAt, not both"}]
        duration = _bad_request(await http.post("/v1/topics/walk:publish", json={"data": 1, "delay": "soon"}))
        [error] = duration["errors"]
        assert error["field"] == "delay"
        assert error["reason"].startswith("invalid duration 'soon'"), error
        assert "Value error" not in duration["detail"]
        fine = await http.post("/v1/topics/walk:publish", json={"dataBase64": "aGk=", "delay": "1s"})
        assert fine.status_code == 200, fine.text


@pytest.mark.parametrize("to", ["yesterday", {"0": "x"}, [1, 2], None, {"zero": 1}])
async def test_a_bad_seek_target_is_one_error_naming_to(node: RunningNode, to: Any) -> None:
    async with _http(node) as http:
        assert (await http.post("/v1/topics/seeking:publish", json={"data": 1})).status_code == 200
        body = _bad_request(await http.post("/v1/topics/seeking/groups/g:seek", json={"to": to}))
        assert body["errors"] == [{"field": "to", "reason": SEEK_HELP}]
        assert body["detail"] == SEEK_HELP


async def test_every_documented_seek_target_still_works(node: RunningNode) -> None:
    async with _http(node) as http:
        assert (await http.post("/v1/topics/seeking:publish", json={"data": 1})).status_code == 200
        for to in ["earliest", "latest", 0, {"0": 0}, "2020-01-01T00:00:00Z"]:
            r = await http.post("/v1/topics/seeking/groups/g:seek", json={"to": to})
            assert r.status_code == 200, (to, r.text)
            assert set(r.json()["positions"]) == {"0"}
        unknown = _bad_request(await http.post("/v1/topics/seeking/groups/g:seek", json={"to": {"9": 0}}))
        assert unknown["errors"] == [{"field": "to", "reason": "no partition 9 in topic 'seeking'"}]
        missing = await http.post("/v1/topics/seeking/groups/g:seek", json={})
        assert missing.status_code == 400 and missing.json()["errors"][0]["field"] == "to"
        schema = (await http.get("/openapi.json")).json()["components"]["schemas"]["SeekRequest"]
        assert len(schema["properties"]["to"]["anyOf"]) == 4  # still documented as its four kinds


@pytest.mark.parametrize("receipt", ["garbage", "0:0:1", "0:0:1:0:0", "a:0:1:0", "0:0:1:", "٣:0:1:0", "0:0:1:0\n"])
async def test_a_malformed_receipt_is_a_400_naming_receipts(node: RunningNode, receipt: str) -> None:
    async with _http(node) as http:
        assert (await http.post("/v1/topics/acks:publish", json={"data": 1})).status_code == 200
        [message] = (await http.post("/v1/topics/acks/groups/g:pull", json={"wait": "2s"})).json()["messages"]
        for verb in ("ack", "nack"):
            r = await http.post(f"/v1/topics/acks/groups/g:{verb}", json={"receipts": [message["receipt"], receipt]})
            body = _bad_request(r)
            [error] = body["errors"]
            assert error["field"] == "receipts", body
            assert error["reason"] == (f"{receipt!r} is not a receipt: send them as deliveries carry them "
                                       "(partition:offset:attempt:n)")
        # refused whole: the good receipt in that request was not acked, and acks now
        assert (await http.post("/v1/topics/acks/groups/g:ack", json={"receipts": [message["receipt"]]})).json() == {
            "acked": 1}


async def test_a_well_formed_stale_receipt_is_still_a_409(node: RunningNode) -> None:
    async with _http(node) as http:
        assert (await http.post("/v1/topics/acks:publish", json={"data": 1})).status_code == 200
        [message] = (await http.post("/v1/topics/acks/groups/g:pull", json={"wait": "2s"})).json()["messages"]
        assert (await http.post("/v1/topics/acks/groups/g:ack", json={"receipts": [message["receipt"]]})).status_code == 200
        again = await http.post("/v1/topics/acks/groups/g:ack", json={"receipts": [message["receipt"]]})
        assert again.status_code == 409, again.text
        assert again.json()["type"] == PROBLEMS + "stale-receipt"


async def _error_frame(ws: Any) -> dict[str, Any]:
    """The next error frame (deliveries may come first)."""
    async with asyncio.timeout(10):
        while True:
            frame = orjson.loads(await ws.recv())
            if "error" in frame:
                return frame["error"]  # type: ignore[no-any-return]


async def test_a_websocket_command_that_is_not_json_says_what_a_command_is(node: RunningNode) -> None:
    async with _http(node) as http:
        assert (await http.post("/v1/topics/socket:publish", json={"data": 1})).status_code == 200
    url = node.url.replace("http", "ws", 1) + "/v1/topics/socket/groups/g:connect"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {node.token}"}) as ws:
        await ws.send("not json")
        assert await _error_frame(ws) == {"status": 400, "detail": COMMAND}
        await ws.send(b"\xff\xfe")  # a binary message that is no UTF-8 either
        assert await _error_frame(ws) == {"status": 400, "detail": COMMAND}
        await ws.send("[1, 2]")
        assert await _error_frame(ws) == {"status": 400, "detail": COMMAND}
        await ws.send(orjson.dumps({"ack": ["garbage"]}).decode())
        error = await _error_frame(ws)
        assert error["status"] == 400 and error["detail"].startswith("'garbage' is not a receipt"), error
        await ws.send(orjson.dumps({"ack": ["0:0:1:999999"]}).decode())  # well-formed, not in flight
        assert (await _error_frame(ws))["status"] == 409
        await ws.send(orjson.dumps({"bogus": 1}).decode())
        assert await _error_frame(ws) == {"status": 400, "detail": "unknown command: use ack or nack"}


async def test_a_dapr_call_without_a_token_names_dapr_api_token(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        r = await http.post("/v1.0/publish/mezzo/daprwalk", content=b"hi")
        assert r.status_code == 401, r.text
        body = r.json()
        assert body["type"] == PROBLEMS + "unauthorized"
        assert "dapr-api-token" in body["detail"] and "Authorization: Bearer" in body["detail"]
        assert r.headers["www-authenticate"] == 'Bearer realm="mezzo"'
        wrong = await http.post("/v1.0/publish/mezzo/daprwalk", content=b"hi", headers={"dapr-api-token": "nope"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid, expired or revoked token"
        ok = await http.post("/v1.0/publish/mezzo/daprwalk", content=b"hi", headers={"dapr-api-token": node.token})
        assert ok.status_code == 204, ok.text
        bearer = await http.post("/v1.0/publish/mezzo/daprwalk", content=b"hi",
                                 headers={"Authorization": f"Bearer {node.token}"})
        assert bearer.status_code == 204, bearer.text


async def test_a_cloudevent_without_specversion_is_told_it_is_required(node: RunningNode) -> None:
    event = {"id": "e-1", "source": "/walk", "type": "walked", "data": {"a": 1}}
    required = 'is required (the CloudEvents version, "1.0")'
    async with _http(node, **{"content-type": "application/cloudevents+json"}) as http:
        one = _bad_request(await http.post("/v1/topics/ce:publish", content=orjson.dumps(event)))
        assert one["errors"] == [{"field": "specversion", "reason": required}]
        wrong = _bad_request(await http.post("/v1/topics/ce:publish",
                                             content=orjson.dumps({**event, "specversion": "0.3"})))
        assert wrong["errors"] == [{"field": "specversion", "reason": 'must be "1.0"'}]
        batch = _bad_request(await http.post(
            "/v1/topics/ce:publish", content=orjson.dumps([{**event, "specversion": "1.0"}, event]),
            headers={"content-type": "application/cloudevents-batch+json"}))
        assert batch["errors"] == [{"field": "[1].specversion", "reason": required}]
        ok = await http.post("/v1/topics/ce:publish", content=orjson.dumps({**event, "specversion": "1.0"}))
        assert ok.status_code == 200, ok.text
