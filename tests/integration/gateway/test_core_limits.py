"""Gateway core, bad input: malformed 400, oversized headers 431, oversized bodies 413, slow clients 408,
and no connection left hanging whatever the client does."""

from __future__ import annotations

import httpx

from mezzo.testing.fixtures import wait_for

from . import core_fixtures
from .core_fixtures import GatewayNode, RawClient, get, route, upstream

gw, origins = core_fixtures.gw, core_fixtures.origins  # fixtures


async def _refused(gw: GatewayNode, data: bytes, status: int) -> None:
    client = await RawClient.connect(gw.port)
    try:
        await client.send(data)
        r = await client.response()
        assert r.status == status, (r.status, r.body)
        assert r.headers.get("connection") == "close"
        assert await client.closed()
    finally:
        client.close()


async def test_malformed_and_oversized_requests(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(upstream("up", a), route("r", ["/*"]))
    await _refused(gw, b"NOT HTTP AT ALL\r\n\r\n", 400)
    await _refused(gw, b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n", 400)
    await _refused(gw, b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd", 400)
    await _refused(gw, b"GET / HTTP/1.1\r\n\r\n", 400)  # HTTP/1.1 without a host
    await _refused(gw, b"GET / HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n", 400)
    await _refused(gw, b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 9000 + b"\r\n\r\n", 431)
    await _refused(gw, b"GET / HTTP/1.1\r\nhost: x\r\n" + b"x-h: 1234567890\r\n" * 600 + b"\r\n", 431)
    await _refused(gw, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nhost: x\r\n\r\n", 414)
    await _refused(gw, b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 9000000\r\n\r\n", 413)
    # a chunked body only shows its size as it comes: cut at the limit, the upstream never sees it whole
    async def chunks():
        for _ in range(100):
            yield b"x" * 100_000
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
        try:
            r = await http.post("/upload", content=chunks())
            assert r.status_code == 413
        except httpx.TransportError:
            pass  # the gateway may close before the client reads the answer
        assert (await http.get("/x")).status_code == 200  # and it still serves
    assert not any(c.exchange for c in gw.gateway.connections)


async def test_pipelined_bad_request_answered_after_good_ones(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(upstream("up", a), route("r", ["/*"]))
    client = await RawClient.connect(gw.port)
    try:
        await client.send(get("/one") + get("/two") + b"BROKEN\r\n\r\n")
        rs = await client.responses(3)
        assert [r.status for r in rs] == [200, 200, 400]
        assert await client.closed()
    finally:
        client.close()


async def test_slow_clients_are_cut(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(upstream("up", a), route("r", ["/*"]))
    # headers that never end
    client = await RawClient.connect(gw.port)
    await client.send(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: 1\r\n")
    r = await client.response()
    assert r.status == 408 and await client.closed()
    client.close()
    # a body that stops coming (buffered size)
    client = await RawClient.connect(gw.port)
    await client.send(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly part")
    r = await client.response()
    assert r.status == 408 and await client.closed()
    client.close()
    # a streamed (chunked) body that stops coming: the upstream exchange ends too
    client = await RawClient.connect(gw.port)
    await client.send(b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
    r = await client.response()
    assert r.status == 408 and await client.closed()
    client.close()
    # a keep-alive connection that goes quiet after its first request is closed, no answer owed
    client = await RawClient.connect(gw.port)
    await client.send(get("/x"))
    assert (await client.response()).status == 200
    await client.send(b"GET /x HTTP/1.1\r\n")
    r = await client.response()
    assert r.status == 408
    client.close()
    await wait_for(lambda: not gw.gateway.connections)


async def test_client_gone_mid_request_does_not_eject_the_node(gw: GatewayNode, origins) -> None:
    (a,) = await origins(1)
    await gw.apply(upstream("up", a, healthCheck={"passive": {"failures": 1}}), route("r", ["/*"]))
    assert a.server is not None
    for i in range(3):
        client = await RawClient.connect(gw.port)
        await client.send(get("/gate"))
        await wait_for(lambda: a.waiting == i + 1)  # noqa: B023
        client.close()  # gone while the upstream works on it
        await wait_for(lambda: not a.server.server_state.connections)  # the gateway closed its side
    a.gate.set()
    balancer = gw.gateway.snapshot.upstreams["default/up"]
    assert balancer.nodes[0].ejected_until == 0 and balancer.nodes[0].active == 0
    async with httpx.AsyncClient(base_url=gw.url) as http:
        assert (await http.get("/x")).status_code == 200


async def test_plugin_errors_never_hang(gw: GatewayNode, origins, monkeypatch) -> None:
    (a,) = await origins(1)
    from mezzo.gateway.plugins import PLUGINS, validate_plugin_configs

    validate_plugin_configs({})  # loads every plugin module

    def broken(self, ctx, headers):  # type: ignore[no-untyped-def]
        raise RuntimeError("plugin bug")
    monkeypatch.setattr(PLUGINS["response-rewrite"], "header_filter", broken)
    await gw.apply(upstream("up", a), route("r", ["/*"], plugins={"response-rewrite": {"headers": {"x": "1"}}}))
    async with httpx.AsyncClient(base_url=gw.url, timeout=5) as http:
        for _ in range(3):
            r = await http.get("/x")
            assert r.status_code == 500


async def test_a_plugin_raising_in_any_phase_gets_an_answer(gw: GatewayNode, origins, monkeypatch) -> None:
    """rewrite, access (sync and async) and body filters that raise give 500 and close the connection;
    a log phase that raises changes nothing for the client."""
    (a,) = await origins(1)
    from mezzo.gateway.plugins import PLUGINS, validate_plugin_configs

    validate_plugin_configs({})  # loads every plugin module

    def broken(self, ctx, *args):  # type: ignore[no-untyped-def]
        raise RuntimeError("plugin bug")

    async def broken_async(self, ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("plugin bug")

    monkeypatch.setattr(PLUGINS["proxy-rewrite"], "rewrite", broken)
    monkeypatch.setattr(PLUGINS["ip-restriction"], "access", broken)
    monkeypatch.setattr(PLUGINS["limit-req"], "access", broken_async)
    monkeypatch.setattr(PLUGINS["response-rewrite"], "body_filter", broken, raising=False)
    monkeypatch.setattr(PLUGINS["prometheus"], "log", broken)
    await gw.apply(upstream("up", a),
                   route("rewrite", ["/rewrite/*"], plugins={"proxy-rewrite": {"uri": "/x"}}),
                   route("access", ["/access/*"], plugins={"ip-restriction": {"whitelist": ["127.0.0.1"]}}),
                   route("async", ["/async/*"], plugins={"limit-req": {"rate": 100, "burst": 10}}),
                   route("body", ["/body/*"], plugins={"response-rewrite": {"headers": {"x": "1"}}}),
                   route("log", ["/log/*"], plugins={"prometheus": {}}))
    for path in ("/rewrite/x", "/access/x", "/async/x", "/body/big?n=10"):
        client = await RawClient.connect(gw.port)
        try:
            await client.send(get(path) + get("/log/x"))  # the second request is never answered
            r = await client.response()
            assert r.status == 500, (path, r.status, r.body)
            assert r.json()["status"] == 500 and r.headers.get("connection") == "close"
            assert await client.closed()
        finally:
            client.close()
    client = await RawClient.connect(gw.port)
    try:
        await client.send(get("/log/x") + get("/log/y"))
        assert [r.status for r in await client.responses(2)] == [200, 200]  # and the connection was kept
    finally:
        client.close()
    await wait_for(lambda: not any(c.exchange for c in gw.gateway.connections))
