"""Serving an application's branch handlers on a port of their own (when they are not mounted into its app).

    async with client.tx.serve(port=8701, advertise="http://orders:8701") as server:
        ...   # the coordinator reaches the handlers at server.url/{name} while the block runs
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import TracebackType
from typing import Self

import uvicorn

from mezzo.sdk.tx_handlers import Handlers


class HandlerServer:
    """``handlers`` on ``host:port`` (0: a free port) until ``aclose``; sets ``handlers.base_url`` to
    ``advertise`` (the address others reach, e.g. a Kubernetes Service), else to the bound address.
    A fixed port keeps branch URLs valid across restarts of the application."""

    def __init__(self, handlers: Handlers, *, host: str = "127.0.0.1", port: int = 0,
                 advertise: str | None = None) -> None:
        self.handlers, self.host, self.port, self.advertise = handlers, host, port, advertise
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    async def start(self) -> Self:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted app takes its port back at once
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._sock = sock
        server = uvicorn.Server(uvicorn.Config(self.handlers, log_level="warning", lifespan="off", access_log=False))
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="mezzo-tx-handlers")
        while not server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the handler server stopped while starting")
            await asyncio.sleep(0.01)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = (self.advertise or f"http://{host}:{self.port}").rstrip("/")
        self.handlers.base_url = self.url
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._task = self._sock = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
