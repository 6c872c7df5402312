"""Binary message frames over HTTP and WebSocket, the same on every broker engine."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from mezzo.messaging.codec import FRAMES, decode_delivery_frames, encode_publish_frame
from mezzo.testing.fixtures import RunningNode

FRAME_BODY = {"Content-Type": FRAMES}


def _http(node: RunningNode) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=node.url, headers={"Authorization": f"Bearer {node.token}"}, timeout=10)


async def _pull_frames(http: httpx.AsyncClient, topic: str, want: int) -> list:  # type: ignore[type-arg]
    got: list = []  # type: ignore[type-arg]
    for _ in range(20):
        r = await http.post(f"/v1/topics/{topic}/groups/g:pull", json={"max": want, "wait": 0.5},
                            headers={"Accept": FRAMES})
        assert r.status_code == 200 and r.headers["content-type"] == FRAMES, r.text
        got += decode_delivery_frames(r.content)
        if len(got) >= want:
            break
    return got


async def test_publish_and_pull_frames(mq: RunningNode) -> None:
    body = (encode_publish_frame(b"\x00\xffraw") + encode_publish_frame(b"hello", {
        "id": "with-options", "key": "k", "tags": ["t"], "attributes": {"a": "b"}, "contentType": "text/plain"}))
    async with _http(mq) as http:
        r = await http.post("/v1/topics/fr:publish", content=body,
                            headers={**FRAME_BODY, "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
        assert r.status_code == 200, r.text
        published = r.json()["messages"]
        assert len(published) == 2 and published[1]["id"] == "with-options"
        first, second = await _pull_frames(http, "fr", 2)
        assert first.data == b"\x00\xffraw" and first.attempt == 1
        assert first.header()["ct"] == "application/octet-stream"
        assert first.header()["attrs"]["traceparent"].startswith("00-1111")  # the publisher's trace goes along
        meta = second.header()
        assert (meta["id"], meta["key"], meta["tags"], meta["ct"], meta["attrs"]["a"]) == (
            "with-options", "k", ["t"], "text/plain", "b")
        assert second.data == b"hello"
        r = await http.post("/v1/topics/fr/groups/g:pull", json={"max": 10})  # JSON consumers read the same messages
        assert r.json()["messages"] == []
        r = await http.post("/v1/topics/fr/groups/g:ack", json={"receipts": [first.receipt, second.receipt]})
        assert r.status_code == 200, r.text
        r = await http.post("/v1/topics/fr/groups/json:pull", json={"max": 10})
        assert [m.get("dataBase64") or m.get("data") for m in r.json()["messages"]] == ["AP9yYXc=", "hello"]


@pytest.mark.parametrize(("body", "field"), [
    (b"\x01\x00", "frames[0]"),
    (encode_publish_frame(b"x") + encode_publish_frame(b"x", {"data": 1}), "frames[1]"),
    (encode_publish_frame(b"x", {"tags": ["has space"]}), "frames[0].tags.0"),
    (encode_publish_frame(b"x", {"nope": 1}), "frames[0].nope"),
    (b"", "body"),
])
async def test_bad_frames_are_problems(mq: RunningNode, body: bytes, field: str) -> None:
    async with _http(mq) as http:
        r = await http.post("/v1/topics/bad:publish", content=body, headers=FRAME_BODY)
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", r.text
        assert r.json()["errors"][0]["field"] == field


async def test_frames_need_a_token_like_json(mq: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=mq.url) as http:
        r = await http.post("/v1/topics/fr:publish", content=encode_publish_frame(b"x"), headers=FRAME_BODY)
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"


async def test_frames_over_the_websocket(mq: RunningNode) -> None:
    import websockets

    async with _http(mq) as http:
        body = b"".join(encode_publish_frame(b"m%d" % i) for i in range(5))
        assert (await http.post("/v1/topics/wsf:publish", content=body, headers=FRAME_BODY)).status_code == 200
        url = mq.url.replace("http", "ws", 1) + "/v1/topics/wsf/groups/g:connect?format=frames&maxInFlight=10"
        got: list[bytes] = []
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {mq.token}"}) as ws:
            while len(got) < 5:
                frames = decode_delivery_frames(await ws.recv())  # type: ignore[arg-type]
                got += [f.data for f in frames]
                await ws.send(orjson.dumps({"ack": [f.receipt for f in frames]}).decode())
        assert got == [b"m%d" % i for i in range(5)]
        for _ in range(100):  # the acks went over the socket just before it closed: poll for them
            if (await http.get("/v1/topics/wsf/groups")).json()["items"][0]["lag"] == 0:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the acks sent over the WebSocket did not arrive")


async def test_publish_over_a_websocket(mq: RunningNode) -> None:
    from mezzo.sdk.errors import APIError

    async with mq.client() as client, client.messaging.producer("wsp") as producer:
        first, second = await asyncio.gather(
            producer.publish_batch([b"a", (b"b", {"key": "k", "id": "b-1"})]),
            producer.publish_batch([b"c"]))
        assert [m["id"] for m in first][1] == "b-1" and len(second) == 1
        with pytest.raises(APIError) as caught:  # a bad batch is answered with its problem; the socket stays
            await producer.publish_batch([(b"x", {"tags": ["has space"]})])
        assert caught.value.status == 400 and caught.value.errors[0]["field"] == "frames[0].tags.0"
        [again] = await producer.publish_batch([(b"b", {"id": "b-1"})])
        assert again["duplicate"] is True
    async with _http(mq) as http:
        got = await _pull_frames(http, "wsp", 3)
        assert sorted(f.data for f in got) == [b"a", b"b", b"c"]


async def test_publish_socket_answers_text_with_a_problem_and_checks_the_token(mq: RunningNode) -> None:
    import websockets

    url = mq.url.replace("http", "ws", 1) + "/v1/topics/wsp:publish"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {mq.token}"}) as ws:
        await ws.send("hello")
        answer = orjson.loads(await ws.recv())
        assert answer["id"] is None and answer["error"]["status"] == 400
        await ws.send(b"\x07\x00")  # too short for a batch number
        assert orjson.loads(await ws.recv())["error"]["status"] == 400
    with pytest.raises(websockets.exceptions.InvalidStatus):  # no token: refused before the upgrade
        async with websockets.connect(url):
            pass
