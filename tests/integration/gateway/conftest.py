"""Fixtures for gateway tests: a node running the gateway, echo upstreams, and ``apply``.

- ``gateway``: a ``GatewayHandle`` — unpacks as ``(running node, gateway base URL)``; ``.apply(*docs)``
  applies manifests through the SDK and returns once the gateway's snapshot covers them;
  ``.runtime`` is the node's ``mezzo.gateway.runtime.Gateway``.
- ``upstream``: a started ``EchoServer`` (``.port``, ``.url``); ``upstreams``: ``await upstreams(n)``
  for more, named b, c, ...
- ``apply``: ``await apply(*docs)`` on the ``gateway`` fixture's node.
- ``upstream_doc``, ``route_doc``, ``consumer_doc``: manifest builders; ``FakeClock`` for plugins
  whose module reads ``clock()``.

The echo server answers every path with the request as JSON (``server``, ``method``, ``path``,
``query``, ``headers``, ``body``, ``n`` = how many times this path was asked). Query arguments
steer the answer: ``status=503`` sets the status, ``set-<header>=<value>`` adds a response header.
``/gate/...`` waits until ``server.gate`` is set (``server.waiting`` counts the parked requests);
``server.canned[path] = (status, headers, body)`` fixes the answer for a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mezzo.gateway.runtime import Gateway
from mezzo.testing.fixtures import RunningNode, start_node, wait_for

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class EchoServer:
    """An upstream app on its own port, in this process."""

    def __init__(self, name: str = "a") -> None:
        self.name = name
        self.port = 0
        self.hits: Counter[str] = Counter()
        self.canned: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.gate = asyncio.Event()
        self.waiting = 0
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _app(self, request: Request) -> Response:
        path = request.url.path
        self.hits[path] += 1
        if path in self.canned:
            status, headers, body = self.canned[path]
            return Response(body, status, headers=headers)
        body = await request.body()
        if path.startswith("/gate"):
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        params = request.query_params
        headers = {"x-server": self.name}
        headers.update({k[4:]: v for k, v in params.items() if k.startswith("set-")})
        status = int(params.get("status", "200"))
        answer = {"server": self.name, "method": request.method, "path": path, "query": request.url.query,
                  "headers": dict(request.headers), "body": body.decode("latin-1"), "n": self.hits[path]}
        content = b"" if status in (204, 304) else orjson.dumps(answer)
        return Response(content, status, headers=headers, media_type="application/json")

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/{path:path}", self._app, methods=METHODS)])
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, http="httptools")
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
        await wait_for(lambda: self.server is not None and self.server.started)

    async def stop(self) -> None:
        self.gate.set()
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 5)
            if not self.task.done():
                self.server.force_exit = True
                with contextlib.suppress(BaseException):
                    await self.task


class FakeClock:
    """A clock tests move by hand: ``monkeypatch.setattr(module, "clock", FakeClock())``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class GatewayHandle(NamedTuple):
    """``(running node, gateway URL)``, and how to configure it."""

    node: RunningNode
    url: str

    @property
    def runtime(self) -> Gateway:
        return self.node.node.service(Gateway)  # type: ignore[no-any-return]

    async def apply(self, *docs: dict[str, Any]) -> int:
        return await apply_docs(self.node, list(docs))


async def apply_docs(node: RunningNode, docs: list[dict[str, Any]]) -> int:
    """Apply manifests (``apiVersion`` added when missing) through the SDK; return the revision once
    the node's gateway snapshot covers it."""
    full = [{"apiVersion": "mezzo.dev/v1", **d} for d in docs]
    async with node.client() as client:
        results = await client.resources.apply(full)
    runtime = node.node.service(Gateway)
    await wait_for(lambda: runtime.covers({f"{r.kind}/{r.namespace}/{r.name}": r.revision for r in results}))
    return max(r.revision for r in results)


def upstream_doc(name: str, *servers: EchoServer, **spec: Any) -> dict[str, Any]:
    nodes = [{"host": "127.0.0.1", "port": s.port} for s in servers]
    return {"kind": "Upstream", "metadata": {"name": name}, "spec": {"nodes": nodes, **spec}}


def route_doc(name: str, paths: list[str], upstream: str | None = "up", plugins: dict[str, Any] | None = None,
              **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"paths": paths, "plugins": plugins or {}, **spec}
    if upstream is not None:
        body["upstream"] = upstream
    return {"kind": "Route", "metadata": {"name": name}, "spec": body}


def consumer_doc(name: str, credentials: dict[str, Any], groups: list[str] | None = None) -> dict[str, Any]:
    return {"kind": "Consumer", "metadata": {"name": name},
            "spec": {"credentials": credentials, "groups": groups or []}}


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[GatewayHandle]:
    """A node running the gateway and the API, everything on free ports."""
    running = await start_node(tmp_path / "data", targets=["gateway", "api"])
    url = running.node.url("gateway")
    assert url is not None
    try:
        yield GatewayHandle(running, url)
    finally:
        await running.node.stop()


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[[int], Awaitable[list[EchoServer]]]]:
    """``await upstreams(n)``: n more started echo servers, named a, b, c, ... in order of creation."""
    made: list[EchoServer] = []

    async def make(count: int) -> list[EchoServer]:
        batch = [EchoServer(chr(97 + len(made) + i)) for i in range(count)]
        for server in batch:
            await server.start()
        made.extend(batch)
        return batch

    try:
        yield make
    finally:
        for server in made:
            await server.stop()


@pytest.fixture
async def upstream(upstreams: Callable[[int], Awaitable[list[EchoServer]]]) -> EchoServer:
    """A started echo server (named a)."""
    return (await upstreams(1))[0]


@pytest.fixture
def apply(gateway: GatewayHandle) -> Callable[..., Awaitable[int]]:
    return gateway.apply
