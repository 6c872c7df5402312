"""Gateway core, HTTP/1.1 on both sides: bodies streamed both ways, HEAD, 204/304, keep-alive reuse,
pipelining, 100-continue, HTTP/1.0 clients, websocket tunnels."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import websockets

from . import core_fixtures
from .core_fixtures import GatewayNode, RawClient, get, route, upstream

gw, origins = core_fixtures.gw, core_fixtures.origins  # fixtures


async def test_request_bodies_buffered_and_streamed(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(upstream("up", a), route("r", ["/*"]))
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
        for size in (0, 1, 64 * 1024, 3 * 1024 * 1024):  # the last one is streamed (over BUFFER_BODY)
            data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
            r = await http.post("/upload", content=data)
            assert r.status_code == 200, r.text
            assert r.json()["len"] == size and r.json()["sha"] == hashlib.sha256(data).hexdigest()

        async def chunks():  # chunked from the client: forwarded chunked
            for i in range(50):
                yield bytes([i]) * 10_000
        r = await http.put("/upload", content=chunks())
        assert r.status_code == 200 and r.json()["len"] == 500_000 and r.json()["chunked"]


async def test_response_bodies_streamed_and_large(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(upstream("up", a), route("r", ["/*"]))
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
        r = await http.get("/stream", params={"n": 200, "size": 5000})
        assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
        assert len(r.content) == 1_000_000 and r.content[:5000] == b"a" * 5000
        r = await http.get("/big", params={"n": 20_000_000})
        assert r.status_code == 200 and r.headers["content-length"] == "20000000" and len(r.content) == 20_000_000
        async with http.stream("GET", "/big", params={"n": 5_000_000}) as streamed:
            got = 0
            async for part in streamed.aiter_raw():
                got += len(part)
                await asyncio.sleep(0)
        assert got == 5_000_000


async def test_head_204_304_and_upstream_reuse(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(upstream("up", a), route("r", ["/*"]))
    client = await RawClient.connect(gw.port)
    try:
        for path in ("/status/204", "/status/304", "/big?n=7", "/stream?n=3&size=2", "/x"):
            await client.send(get(path))
        rs = await client.responses(5)
    finally:
        client.close()
    assert [r.status for r in rs] == [204, 304, 200, 200, 200]
    assert rs[0].body == b"" and rs[1].body == b"" and rs[2].body == b"x" * 7 and rs[3].body == b"aabbcc"
    assert "transfer-encoding" not in rs[0].headers and "content-length" not in rs[0].headers
    async with httpx.AsyncClient(base_url=gw.url) as http:
        for _ in range(3):
            r = await http.head("/big", params={"n": 1000})
            assert r.status_code == 200 and r.headers["content-length"] == "1000" and r.content == b""
        r = await http.get("/big", params={"n": 10})
        assert r.content == b"x" * 10
    # every request above went over one upstream connection (HEAD answers included)
    assert len(set(a.client_ports)) == 1, a.client_ports


async def test_keepalive_reuses_upstream_connections(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(upstream("up", a), route("r", ["/*"]))
    async with httpx.AsyncClient(base_url=gw.url) as http:
        for _ in range(20):
            assert (await http.get("/x")).status_code == 200
        await asyncio.gather(*(http.get("/x") for _ in range(10)))
    assert a.requests == 30
    assert len(set(a.client_ports)) <= 10


async def test_pipelined_requests_answered_in_order(gw: GatewayNode, origins) -> None:
    a, b = await origins(2)
    b.delay = 0.02  # the first answers are the slow ones: order must still hold
    await gw.apply(upstream("up-a", a), upstream("up-b", b),
                   route("slow", ["/slow"], "up-b"), route("fast", ["/*"], "up-a"))
    client = await RawClient.connect(gw.port)
    try:
        paths = ["/slow", "/one", "/slow", "/two?x=1", "/three"]
        await client.send(b"".join(get(p) for p in paths) + b"POST /post HTTP/1.1\r\nhost: gw\r\n"
                          b"content-length: 5\r\n\r\nhello")
        rs = await client.responses(6)
    finally:
        client.close()
    assert [r.json()["path"] for r in rs] == ["/slow", "/one", "/slow", "/two", "/three", "/post"]
    assert rs[5].json()["len"] == 5


async def test_expect_continue_and_http10(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(upstream("up", a), route("r", ["/*"]))
    client = await RawClient.connect(gw.port)
    try:
        await client.send(b"POST /upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
        line = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        assert line.startswith(b"HTTP/1.1 100")
        await client.send(b"data")
        r = await client.response()
        assert r.status == 200 and r.json()["len"] == 4 and "expect" not in r.json()["headers"]
    finally:
        client.close()
    # an HTTP/1.0 client gets a close-delimited body for a chunked upstream answer, not chunked framing
    client = await RawClient.connect(gw.port)
    try:
        await client.send(b"GET /stream?n=3&size=4 HTTP/1.0\r\n\r\n")
        raw = await asyncio.wait_for(client.reader.read(-1), 5)
    finally:
        client.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower() and body == b"aaaabbbbcccc"


async def test_websocket_is_tunnelled(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(upstream("up", a), route("ws", ["/ws"]), route("no-ws", ["/nows"], enableWebsocket=False))
    async with websockets.connect(f"ws://{gw.host}:{gw.port}/ws") as ws:
        assert await ws.recv() == "hello from a"  # sent by the upstream right after its 101
        for i in range(20):
            await ws.send(f"m{i}")
            assert await ws.recv() == f"echo:m{i}"
    client = await RawClient.connect(gw.port)
    try:
        await client.send(b"GET /nows HTTP/1.1\r\nhost: gw\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
                          b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        r = await client.response()
        assert r.status == 400
        assert await client.closed()
    finally:
        client.close()


async def test_body_filter_hook(gw: GatewayNode, origins, monkeypatch) -> None:
    """A plugin with body_filter(ctx, chunk, last) sees every response chunk and may replace it."""
    (a,) = await origins(1)
    from mezzo.gateway.plugins import PLUGINS, validate_plugin_configs

    validate_plugin_configs({})  # loads every plugin module

    def body_filter(self, ctx, chunk: bytes, last: bool) -> bytes:  # type: ignore[no-untyped-def]
        return chunk.upper() + (b"|end" if last else b"")
    monkeypatch.setattr(PLUGINS["response-rewrite"], "body_filter", body_filter, raising=False)
    await gw.apply(upstream("up", a), route("r", ["/*"], plugins={"response-rewrite": {"headers": {"x-f": "1"}}}))
    async with httpx.AsyncClient(base_url=gw.url) as http:
        r = await http.get("/big", params={"n": 5})
        assert r.content == b"XXXXX|end" and r.headers["x-f"] == "1"
        assert "content-length" not in r.headers and r.headers["transfer-encoding"] == "chunked"
        r = await http.get("/stream", params={"n": 3, "size": 2})
        assert r.content == b"AABBCC|end"
        r = await http.head("/big", params={"n": 5})
        assert r.status_code == 200 and r.content == b""
