"""Gateway core, the upstream's response head: passed on as sent (lean: no plugin reads headers) or header
by header (a plugin does), with the same result: hop-by-hop lines dropped, the body framed for the client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from . import core_fixtures
from .core_fixtures import GatewayNode, RawClient, RawResponse, get

gw = core_fixtures.gw  # fixture

HOPS = (b"Connection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\nTrailer: x-t\r\nUpgrade: h2c\r\nX-Hop: named in Connection\r\nconnection: x-hop2\r\n"
        b"x-hop2: 2\r\n")
ANSWERS = {
    # a head with every hop-by-hop header, framed by content-length
    b"/hops": b"HTTP/1.1 200 OK\r\nServer: canned\r\n" + HOPS + b"X-Kept: 1\r\nTeapot: short\r\n"
              b"Content-Length: 5\r\n\r\nhello",
    # chunked upstream: the client gets it chunked again (the gateway decodes and re-frames)
    b"/chunked": b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\nx-kept: 2\r\n\r\n"
                 b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    # an interim 100 before the answer, in the same write
    b"/interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-kept: 3\r\n\r\nok",
    # a close-delimited body: the head is followed by the body and then the close
    b"/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nx-kept: 4\r\n\r\nuntil the end",
    # bare LF line ends are not HTTP/1.1
    b"/bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
}


class Canned:
    """An upstream that answers each path with fixed bytes; ``/split`` sends its head in three writes."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path == b"/split":
                    for part in (b"HTTP/1.1 200 OK\r\nx-ke", b"pt: 5\r\nContent-Len", b"gth: 3\r\n\r\nabc"):
                        writer.write(part)
                        await writer.drain()
                        await asyncio.sleep(0.02)  # separate reads on the gateway's side, most likely
                    continue
                writer.write(ANSWERS[path])
                await writer.drain()
                if path in (b"/close", b"/bare-lf"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def canned() -> AsyncIterator[Canned]:
    server = Canned()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _routes(gw: GatewayNode, canned: Canned) -> None:
    await gw.apply(
        {"kind": "Upstream", "metadata": {"name": "canned"},
         "spec": {"nodes": [{"host": "127.0.0.1", "port": canned.port}], "retries": 0}},
        {"kind": "Route", "metadata": {"name": "lean"}, "spec": {"paths": ["/lean/*"], "upstream": "canned",
                                                               "plugins": {"proxy-rewrite": {"regexUri": ["^/lean", ""]}}}},
        # response-rewrite has a header filter: this route reads the response header by header
        {"kind": "Route", "metadata": {"name": "full"}, "spec": {"paths": ["/full/*"], "upstream": "canned", "plugins": {
            "proxy-rewrite": {"regexUri": ["^/full", ""]}, "response-rewrite": {"headers": {"x-rw": "1"}}}}})
    router = gw.gateway.snapshot.router
    lean, full = router.match(_req("/lean/x")), router.match(_req("/full/x"))
    assert lean is not None and full is not None and lean[0].lean and not full[0].lean


def _req(path: str):  # type: ignore[no-untyped-def]
    from mezzo.gateway.http import Request

    return Request("GET", path.encode(), [(b"host", b"gw.test")], "127.0.0.1", "1.1", True)


@pytest.mark.parametrize("way", ["lean", "full"])
async def test_hop_by_hop_lines_dropped_and_bodies_framed(gw: GatewayNode, canned: Canned, way: str) -> None:
    await _routes(gw, canned)
    client = await RawClient.connect(gw.port)
    try:
        await client.send(get(f"/{way}/hops"))
        r = await client.response()
        assert r.status == 200 and r.body == b"hello"
        assert r.headers["x-kept"] == "1" and r.headers["teapot"] == "short" and r.headers["server"] == "canned"
        for hop in ("keep-alive", "proxy-connection", "te", "trailer", "upgrade", "x-hop", "x-hop2"):
            assert hop not in r.headers, hop
        assert r.headers["connection"] == "keep-alive" and r.headers["content-length"] == "5"
        assert ("x-rw" in r.headers) == (way == "full")

        await client.send(get(f"/{way}/chunked"))
        r = await client.response()
        assert (r.status, r.body, r.chunked, r.headers["x-kept"]) == (201, b"abcde", True, "2")

        await client.send(get(f"/{way}/interim"))
        r = await client.response()
        assert (r.status, r.body, r.headers["x-kept"]) == (200, b"ok", "3")

        await client.send(get(f"/{way}/split"))
        r = await client.response()
        assert (r.status, r.body, r.headers["x-kept"]) == (200, b"abc", "5")

        # HTTP/1.0 client, close-delimited upstream body: the body ends when the connection does
        await client.send(f"GET /{way}/close HTTP/1.0\r\n\r\n".encode())
        data = await asyncio.wait_for(client.reader.read(-1), 10)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nx-kept: 4" in head and body == b"until the end"
        assert b"\r\nconnection: close" in head.lower()
    finally:
        client.close()


async def _one(gw: GatewayNode, request: bytes) -> RawResponse:
    client = await RawClient.connect(gw.port)
    try:
        await client.send(request)
        return await client.response()
    finally:
        client.close()


@pytest.mark.parametrize("way", ["lean", "full"])
async def test_close_delimited_body_chunked_and_bare_lf_refused(gw: GatewayNode, canned: Canned, way: str) -> None:
    await _routes(gw, canned)
    r = await _one(gw, get(f"/{way}/close"))
    assert (r.status, r.body, r.chunked) == (200, b"until the end", True)  # an HTTP/1.1 client: chunked
    assert (await _one(gw, get(f"/{way}/bare-lf"))).status == 502
