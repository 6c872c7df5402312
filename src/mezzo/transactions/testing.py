"""A scripted branch application for tests and examples: endpoints whose answers a test decides."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SUCCESS = (200, b'{"dtm_result":"SUCCESS"}')


@dataclass
class Call:
    name: str
    params: dict[str, str]
    body: Any


@dataclass
class Busi:
    """Branch endpoints at ``{url}/{name}``: each answers the next scripted (status, body), else SUCCESS."""

    url: str = ""
    script: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)  # a call to name waits for its gate

    def on(self, name: str, *answers: tuple[int, bytes] | int) -> None:
        self.script.setdefault(name, []).extend(
            (a, b"") if isinstance(a, int) else a for a in answers)

    def names(self, gid: str | None = None) -> list[str]:
        return [c.name for c in self.calls if gid is None or c.params.get("gid") == gid]

    async def handle(self, request: Request) -> Response:
        name = request.path_params["name"]
        raw = await request.body()
        body = orjson.loads(raw) if raw else None
        self.calls.append(Call(name, dict(request.query_params), body))
        gate = self.gates.get(name)
        if gate is not None:
            await gate.wait()
        queue = self.script.get(name)
        status, content = queue.pop(0) if queue else SUCCESS
        return Response(content, status_code=status, media_type="application/json")


@contextlib.asynccontextmanager
async def serve_busi() -> AsyncIterator[Busi]:
    """Serve a Busi on a free local port until the block ends."""
    app_state = Busi()
    app = Starlette(routes=[Route("/{name}", app_state.handle, methods=["GET", "POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app_state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield app_state
    finally:
        for gate in app_state.gates.values():
            gate.set()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()
