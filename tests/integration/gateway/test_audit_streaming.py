"""Audit: bodies really stream (the far side sees the first bytes before the near side has sent the
last), chunked framing both ways, and the send and read timeouts blamed on the side that stalls.

A gateway that buffered whole bodies would pass a test that only compares what arrives; these
hold one end back until the other has seen the first part."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mezzo.testing.fixtures import wait_for

from . import core_fixtures
from .core_fixtures import GatewayNode, RawClient, get, route, start_gateway, upstream

origins = core_fixtures.origins  # fixture
MiB = 1024 * 1024


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[GatewayNode]:
    """The core fixture's gateway (1 s header and body timeouts), with room for very large bodies."""
    node = await start_gateway(tmp_path / "data", gateway_max_body=1024 * MiB)
    try:
        yield node
    finally:
        await node.running.node.stop()


class Held:
    """A raw upstream. It counts the request body bytes it has read; ``/reply`` sends the first part
    of its answer, then waits for ``release``; ``/sink`` reads the request head, then nothing more."""

    def __init__(self) -> None:
        self.received = 0
        self.complete = False
        self.release = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Held:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # /sink fills up soon
        sock.bind(("127.0.0.1", 0))
        self.server = await asyncio.start_server(self._serve, sock=sock)
        self.port = sock.getsockname()[1]
        return self

    async def close(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            if path == b"/sink":
                await self.release.wait()
            elif path.startswith(b"/reply"):
                await self._reply(path, writer)
            else:
                await self._take_body(head, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _take_body(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lower = head.lower()
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0]) if b"content-length:" in lower else None
        tail = b""
        while length is None or self.received < length:
            data = await reader.read(65536)
            if not data:
                return
            self.received += len(data)
            tail = (tail + data)[-5:]
            if length is None and tail == b"0\r\n\r\n":
                break
        self.complete = True
        body = b"%d" % self.received
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    async def _reply(self, path: bytes, writer: asyncio.StreamWriter) -> None:
        if path == b"/reply-chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            rest = b"4\r\nlast\r\n0\r\n\r\n"
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nfirst")
            rest = b"last"
        await writer.drain()
        await self.release.wait()
        writer.write(rest)
        await writer.drain()


@pytest.fixture
async def held() -> AsyncIterator[Held]:
    server = await Held().start()
    try:
        yield server
    finally:
        await server.close()


async def _read_until(client: RawClient, marker: bytes) -> bytes:
    seen = b""
    while marker not in seen:
        data = await asyncio.wait_for(client.reader.read(65536), 10)
        if not data:
            raise ConnectionError(f"closed before {marker!r}: {seen!r}")
        seen += data
    return seen


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_request_body_reaches_the_upstream_while_the_client_still_sends(gw: GatewayNode, held: Held,
                                                                             framing: str) -> None:
    await gw.apply(upstream("up", held), route("r", ["/*"]))
    first, rest = b"a" * (3 * MiB // 2), b"b" * (MiB // 2)  # over the 1 MiB a request is buffered up to
    client = await RawClient.connect(gw.port)
    try:
        if framing == "chunked":
            await client.send(b"POST /up HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n"
                              b"%x\r\n%s\r\n" % (len(first), first))
        else:
            await client.send(b"POST /up HTTP/1.1\r\nhost: gw\r\ncontent-length: %d\r\n\r\n%s"
                              % (len(first) + len(rest), first))
        await wait_for(lambda: held.received > 0)  # the upstream has a part; the client has not sent the rest
        assert not held.complete
        await client.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest) if framing == "chunked" else rest)
        r = await client.response()
        assert r.status == 200 and int(r.body) >= len(first) + len(rest)
    finally:
        client.close()


@pytest.mark.parametrize("path", ["/reply", "/reply-chunked"])
@pytest.mark.parametrize("plugins", [{}, {"response-rewrite": {"headers": {"x-seen": "1"}}}], ids=["lean", "full"])
async def test_response_body_reaches_the_client_while_the_upstream_still_sends(
        gw: GatewayNode, held: Held, path: str, plugins: dict[str, Any]) -> None:
    await gw.apply(upstream("up", held), route("r", ["/*"], plugins=plugins))
    client = await RawClient.connect(gw.port)
    try:
        await client.send(get(path))
        head = await _read_until(client, b"first")  # before the upstream sends the rest
        if path == "/reply-chunked":
            assert b"transfer-encoding: chunked" in head.lower()  # re-framed chunked for the client
        held.release.set()
        rest = await _read_until(client, b"last")
        body = (head + rest).partition(b"\r\n\r\n")[2]
        assert body == (b"5\r\nfirst\r\n4\r\nlast\r\n0\r\n\r\n" if path == "/reply-chunked" else b"firstlast")
    finally:
        client.close()


async def _stalled_upload(gw: GatewayNode) -> int:
    """A chunked upload to an upstream that stops reading it; the status the client gets."""
    client = await RawClient.connect(gw.port)
    chunk = b"%x\r\n%s\r\n" % (MiB, b"u" * MiB)

    async def send() -> None:
        await client.send(b"POST /sink HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(512):  # far more than every buffer on the way holds
            await client.send(chunk)

    sender = asyncio.create_task(send())
    try:
        return (await client.response(timeout=30)).status
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        client.close()


async def test_an_upstream_that_stops_taking_the_body_gets_the_send_timeout(gw: GatewayNode, held: Held) -> None:
    """The upstream stops reading; the gateway stops reading the client for its sake. That is the
    upstream's send timeout (504), not the client's body timeout (408), whichever is shorter."""
    await gw.apply(upstream("short", held, timeout={"send": "300ms"}), route("short", ["/sink"], "short"))
    assert await _stalled_upload(gw) == 504  # a send timeout shorter than the gateway's 1 s body timeout
    await gw.apply(upstream("long", held, timeout={"send": "2s"}), route("short", ["/sink"], "long"))
    assert await _stalled_upload(gw) == 504  # and a longer one: the client sent all it could


async def test_a_client_that_stops_reading_is_cut_without_blaming_the_node(gw: GatewayNode, origins) -> None:
    """The client stops reading a large answer; the gateway stops reading the upstream for its sake.
    When the read clock runs out it is the client that stalled: its connection is dropped (unsent
    bytes and all), and the node is neither failed nor ejected."""
    (a,) = await origins(1)
    await gw.apply(upstream("up", a, timeout={"read": "500ms"}, healthCheck={"passive": {"failures": 1}}),
                   route("r", ["/*"]))
    assert a.server is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # this client's buffers fill up soon
    sock.connect(("127.0.0.1", gw.port))
    sock.setblocking(False)
    client = RawClient(*await asyncio.open_connection(sock=sock))
    try:
        await client.send(get(f"/big?n={64 * MiB}"))  # and never read
        await wait_for(lambda: a.requests == 1)
        await wait_for(lambda: not a.server.server_state.connections, timeout=30)  # the exchange ended
        await wait_for(lambda: all(c.closed for c in gw.gateway.connections))
        node = gw.gateway.snapshot.upstreams["default/up"].nodes[0]
        assert node.fails == 0 and node.ejected_until == 0
        await wait_for(lambda: not gw.gateway.connections)  # the client's connection is gone, not lingering
    finally:
        client.close()
