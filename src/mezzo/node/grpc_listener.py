"""A node listener that is a ``grpc.aio`` server in the node's event loop (Dapr's gRPC API, OTLP/gRPC).

Imported only by the listeners that need it, so a node or CLI that serves no gRPC never loads grpcio.
"""

from __future__ import annotations

import asyncio
import time

import grpc.aio

from mezzo.node.server import bind


class GrpcListener:
    """One gRPC port. Subclasses add their services to ``self.server`` in their ``__init__``, after
    this one's (gRPC takes handlers until the server starts) and name themselves with ``name``."""

    name = "grpc"

    def __init__(self, host: str, port: int, drain_timeout: float, max_message: int) -> None:
        if port:  # the port is free now (else the usual one-line "cannot listen on" error), before gRPC takes it
            bind(host, port).close()
        self.drain_timeout = drain_timeout
        # one listener per port: without grpc.so_reuseport=0 gRPC sets SO_REUSEPORT, and would share
        # the port with another server (a Dapr sidecar, a Collector, another Mezzo) instead of failing
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0),
                                               ("grpc.max_receive_message_length", max_message),
                                               ("grpc.max_send_message_length", max_message)])
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {host}:{port}: {exc}") from None
        self.url = f"grpc://{'[' + host + ']' if ':' in host else host}:{bound}"
        self.port = bound
        self._stopping: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    async def start(self) -> None:
        await self.server.start()
        self._started = True

    def force(self) -> None:
        """Cut in-flight calls now."""
        self._stopping = asyncio.get_running_loop().create_task(self.server.stop(None))

    async def quiesce(self, timeout: float) -> None:
        """What must end before the server stops (e.g. streams told to go elsewhere); at most ``timeout`` s."""

    async def close(self) -> None:
        """Stop accepting; calls in flight finish up to the drain timeout (``quiesce`` included), then are cut."""
        if self._closed:
            return
        self._closed = True
        if not self._started:  # the node failed to start: gRPC bound the port in __init__, and a server
            # that never started keeps it (taking connections it never answers) until the process exits
            await self.server.start()
            await self.server.stop(None)
            return
        started = time.monotonic()
        await self.quiesce(self.drain_timeout)
        await self.server.stop(max(self.drain_timeout - (time.monotonic() - started), 0.1))
        if self._stopping is not None:
            await self._stopping
