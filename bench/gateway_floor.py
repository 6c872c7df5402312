"""The least a reverse proxy on the gateway issue's own stack (uvloop + httptools, one process) can do
per request: the floor under any Python gateway, for `FLOOR=1 bench/gateway.sh`.

    .venv/bin/python bench/gateway_floor.py LISTEN_PORT UPSTREAM_PORT

No routing, no plugins, no timeouts, no health, no header handling: a client's request is parsed for
its framing and its bytes written to an idle keep-alive upstream connection as they came; the answer's
bytes go back as they come, parsed only to see where it ends. GET and HEAD without bodies only (what
wrk sends). If this cannot reach a throughput, no gateway built on it can.
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.client: Client | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.client is not None and self.client.transport is not None
        if self.client.transport.is_closing():  # wrk stopped mid-answer: this connection is done
            assert self.transport is not None
            self.transport.close()
            return
        self.client.transport.write(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.client, self.parser = None, httptools.HttpResponseParser(self)
        self.pool.append(self)  # idle again: most recently used first

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)


class Client(asyncio.Protocol):
    def __init__(self, port: int, pool: list[Upstream]) -> None:
        self.port, self.pool = port, pool
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.head += data
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        request, self.head = bytes(self.head), bytearray()
        if self.pool:
            upstream = self.pool.pop()
            upstream.client = self
            assert upstream.transport is not None
            upstream.transport.write(request)
        else:
            asyncio.get_running_loop().create_task(self._connect(request))

    async def _connect(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(lambda: Upstream(self.pool), "127.0.0.1", self.port)
        upstream.client = self
        assert upstream.transport is not None
        upstream.transport.write(request)


async def main(listen: int, upstream: int) -> None:
    pool: list[Upstream] = []
    server = await asyncio.get_running_loop().create_server(lambda: Client(upstream, pool), "127.0.0.1", listen,
                                                             backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
