"""Serving an ASGI app on a socket the node binds itself, with a graceful drain on close."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """Bind now (port 0 picks a free port) so the URL is known before serving starts.

    ``reuse_port``: SO_REUSEPORT, set before the bind where it counts, so several processes can
    listen on the port and the kernel spreads connections among them (gateway workers)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY only then
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


class HttpListener:
    """An ASGI app on a bound socket, served by uvicorn (httptools, no lifespan: the node owns lifecycle)."""

    def __init__(self, name: str, app: Any, sock: socket.socket, *, drain_timeout: float,
                 closes_last: bool = False) -> None:
        self.name = name
        self.closes_last = closes_last  # see mezzo.node.module.Listener
        self.sock = sock
        self.url = url_of(sock)
        config = uvicorn.Config(
            app,
            lifespan="off",
            http="httptools",
            ws="auto",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=max(drain_timeout, 0.1),
            timeout_keep_alive=15,
        )
        config.load()
        self.server = uvicorn.Server(config)
        self.server.lifespan = config.lifespan_class(config)
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.startup(sockets=[self.sock])
        self._loop_task = asyncio.create_task(self.server.main_loop(), name=f"mezzo-{self.name}")

    def force(self) -> None:
        self.server.force_exit = True

    async def close(self) -> None:
        """Stop accepting, let in-flight requests finish up to the drain timeout, then cut."""
        self.server.should_exit = True
        if self._loop_task is not None:
            await self._loop_task
            await self.server.shutdown(sockets=[self.sock])
            if self.server.force_exit:  # uvicorn stops waiting but leaves the requests running: cut them
                for task in list(self.server.server_state.tasks):
                    task.cancel()
        self.sock.close()
