"""Fixtures for the gateway core tests: a node running the gateway, real upstream apps, a raw HTTP client.

Upstream nodes are Starlette apps served by uvicorn on their own sockets in this process; a node
can be killed abruptly (listener closed, connections reset) and started again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from mezzo.gateway.runtime import Gateway
from mezzo.resources.manifests import SourceDocument
from mezzo.resources.service import ResourceService
from mezzo.testing.fixtures import RunningNode, start_node, wait_for

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class Origin:
    """One upstream node: an app that echoes, streams, waits on a gate, and tells who answered."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.gate = asyncio.Event()  # /gate answers once this is set
        self.waiting = 0  # requests parked at the gate
        self.healthy = True  # what /health says
        self.delay = 0.0  # how long /slow takes
        self.requests = 0
        self.client_ports: list[int] = []
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None
        self.app = self._app()

    def _app(self) -> Starlette:
        async def echo(request: Request) -> Response:
            body = await request.body()
            return self._answer(request, {"len": len(body), "sha": hashlib.sha256(body).hexdigest()})

        async def gate(request: Request) -> Response:
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
            return self._answer(request, {"gated": True})

        async def stream(request: Request) -> Response:
            count = int(request.query_params.get("n", "5"))
            size = int(request.query_params.get("size", "10"))

            async def chunks() -> AsyncIterator[bytes]:
                for i in range(count):
                    yield bytes([97 + i % 26]) * size
            self._count(request)
            return StreamingResponse(chunks(), headers={"x-node": self.name})

        async def upload(request: Request) -> Response:
            digest, size = hashlib.sha256(), 0
            async for part in request.stream():
                digest.update(part)
                size += len(part)
            return self._answer(request, {"len": size, "sha": digest.hexdigest(),
                                          "chunked": request.headers.get("transfer-encoding") == "chunked"})

        async def status(request: Request) -> Response:
            self._count(request)
            code = int(request.path_params["code"])
            return Response(b"" if code in (204, 304) else b"status body", code, headers={"x-node": self.name})

        async def big(request: Request) -> Response:
            self._count(request)
            return Response(b"x" * int(request.query_params["n"]), headers={"x-node": self.name})

        async def health(request: Request) -> Response:
            self._count(request)
            return Response(b"ok" if self.healthy else b"down", 200 if self.healthy else 503)

        async def slow(request: Request) -> Response:
            await asyncio.sleep(self.delay)
            return self._answer(request, {})

        async def ws(websocket: WebSocket) -> None:
            await websocket.accept()
            await websocket.send_text(f"hello from {self.name}")
            with contextlib.suppress(Exception):
                while True:
                    await websocket.send_text("echo:" + await websocket.receive_text())

        return Starlette(routes=[
            Route("/gate", gate, methods=METHODS), Route("/stream", stream), Route("/upload", upload, methods=METHODS),
            Route("/status/{code:int}", status, methods=METHODS), Route("/big", big, methods=METHODS),
            Route("/health", health), Route("/slow", slow), WebSocketRoute("/ws", ws),
            Route("/{path:path}", echo, methods=METHODS),
        ])

    def _count(self, request: Request) -> None:
        self.requests += 1
        if request.client is not None:
            self.client_ports.append(request.client.port)

    def _answer(self, request: Request, extra: dict[str, Any]) -> Response:
        self._count(request)
        return JSONResponse({"node": self.name, "method": request.method, "path": request.url.path,
                             "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
                             "query": request.url.query, "headers": dict(request.headers), **extra},
                            headers={"x-node": self.name})

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY then
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(512)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, access_log=False, ws="websockets-sansio",
                                timeout_keep_alive=30, http="httptools")
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
        await wait_for(lambda: self.server is not None and self.server.started)

    async def kill(self) -> None:
        """Stop as a killed process would: the port refuses, open connections are reset."""
        server = self.server
        assert server is not None and self.task is not None
        for listener in server.servers:
            listener.close()
        for conn in list(server.server_state.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()
        server.should_exit = server.force_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 5)
        self.server = self.task = None

    async def stop(self) -> None:
        self.gate.set()
        if self.server is not None:
            await self.kill()


@pytest.fixture
async def origins() -> AsyncIterator[Callable[[int], Awaitable[list[Origin]]]]:
    """``await origins(n)``: n running upstream nodes named a, b, c..."""
    made: list[Origin] = []

    async def make(count: int) -> list[Origin]:
        batch = [Origin(chr(97 + len(made) + i)) for i in range(count)]
        for origin in batch:
            await origin.start()
        made.extend(batch)
        return batch

    try:
        yield make
    finally:
        for origin in made:
            await origin.stop()


@dataclass
class GatewayNode:
    """A node with the gateway module; ``apply`` writes resources and waits until the gateway has them."""

    running: RunningNode
    url: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    applied: list[int] = field(default_factory=list)
    last_applied: dict[str, int] = field(default_factory=dict)  # "Kind/ns/name" -> revision, of the last apply

    @property
    def gateway(self) -> Gateway:
        return self.running.node.service(Gateway)

    async def apply(self, *docs: dict[str, Any]) -> int:
        service = self.running.node.service(ResourceService)
        full = [{"apiVersion": "mezzo.dev/v1", **d} for d in docs]
        results = await service.apply(service.validate([SourceDocument("test", i + 1, d) for i, d in enumerate(full)]),
                                      "test")
        self.last_applied = {f"{r.kind}/{r.namespace}/{r.name}": r.revision for r in results}
        await wait_for(lambda: self.gateway.covers(self.last_applied))
        return max(r.revision for r in results)

    async def delete(self, kind: str, name: str) -> None:
        service = self.running.node.service(ResourceService)
        await service.delete(kind, "default", name, "test")
        await wait_for(lambda: f"default/{name}" not in self.gateway.items[kind] and self.gateway._rebuild is None)


def upstream(name: str, *origins: Origin, **spec: Any) -> dict[str, Any]:
    nodes = [{"host": "127.0.0.1", "port": o.port} for o in origins]
    return {"kind": "Upstream", "metadata": {"name": name}, "spec": {"nodes": nodes, **spec}}


def route(name: str, paths: list[str], upstream_name: str | None = "up", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"paths": paths, **spec}
    if upstream_name is not None:
        body["upstream"] = upstream_name
    return {"kind": "Route", "metadata": {"name": name}, "spec": body}


async def start_gateway(data_dir: Path, **settings: Any) -> GatewayNode:
    values = {"targets": ["gateway", "api"], "gateway_header_timeout": 1.0, "gateway_body_timeout": 1.0,
              "gateway_max_body": 8 * 1024 * 1024, "gateway_max_header_bytes": 8 * 1024, **settings}
    running = await start_node(data_dir, **values)
    url = running.node.url("gateway")
    assert url is not None
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return GatewayNode(running, url, host, int(port))


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[GatewayNode]:
    """A node running the gateway (and the API) with short client timeouts and small limits."""
    node = await start_gateway(tmp_path / "data")
    try:
        yield node
    finally:
        await node.running.node.stop()


# a raw HTTP/1.1 client, for what httpx will not send ------------------------------------------

@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    chunked: bool = False

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.body)


class _Collector:
    def __init__(self) -> None:
        self.done: list[RawResponse] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.status = 0
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        headers = {k.decode(): v.decode("latin-1") for k, v in self.headers}
        self.done.append(RawResponse(self.status, headers, b"".join(self.body),
                                     headers.get("transfer-encoding") == "chunked"))
        self.headers, self.body = [], []


class RawClient:
    """One TCP connection; send bytes, read whole responses in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.collector = _Collector()

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def responses(self, count: int, timeout: float = 10) -> list[RawResponse]:
        async def read() -> list[RawResponse]:
            while len(self.collector.done) < count:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError(f"closed after {len(self.collector.done)} responses")
                self.collector.parser.feed_data(data)
            out, self.collector.done = self.collector.done[:count], self.collector.done[count:]
            return out
        return await asyncio.wait_for(read(), timeout)

    async def response(self, timeout: float = 10) -> RawResponse:
        return (await self.responses(1, timeout))[0]

    async def closed(self, timeout: float = 10) -> bool:
        """True once the server closed the connection (what was left unread is dropped)."""
        async def read() -> bool:
            while True:
                try:
                    if not await self.reader.read(65536):
                        return True
                except ConnectionError:
                    return True
        return await asyncio.wait_for(read(), timeout)

    def close(self) -> None:
        self.writer.close()


def get(path: str, host: str = "gw.test", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n".encode()
