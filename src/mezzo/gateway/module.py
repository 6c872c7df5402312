"""The ``gateway`` module: the data plane on the gateway port, configured by resources."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import structlog

from mezzo.gateway.model import KINDS
from mezzo.gateway.proxy import ClientConnection, Limits
from mezzo.gateway.runtime import Gateway
from mezzo.node.module import Health, Module
from mezzo.node.server import bind, url_of
from mezzo.resources.informer import Informer
from mezzo.resources.model import Resource
from mezzo.resources.service import ResourceService
from mezzo.telemetry.metrics import Metrics

log = structlog.get_logger("mezzo.gateway")


class GatewayModule(Module):
    name = "gateway"
    kinds = KINDS

    async def start(self) -> None:
        settings = self.node.settings
        limits = Limits(max_header_bytes=settings.gateway_max_header_bytes, max_body=settings.gateway_max_body,
                        header_timeout=settings.gateway_header_timeout, body_timeout=settings.gateway_body_timeout,
                        keepalive_timeout=settings.gateway_keepalive_timeout)
        registry = self._registry()
        cache = settings.cache if settings.cache.startswith(("redis://", "rediss://")) else None
        self.gateway = Gateway(limits, self.node.service(Metrics), registry, cache)
        self.node.provide(Gateway, self.gateway)
        resources = self.node.service(ResourceService)
        self.informers = [Informer(resources, kind.kind, self._handler(kind.kind)) for kind in KINDS]
        for informer in self.informers:
            await informer.start()
        self.sock = bind(settings.host, settings.gateway_port)
        with_reuseport(self.sock)

    def _registry(self) -> Any:
        try:
            from mezzo.registry.view import RegistryView  # type: ignore[import-not-found]
        except ImportError:
            return None
        if not self.node.has(RegistryView):
            return None
        view = self.node.service(RegistryView)
        subscribe = getattr(view, "subscribe", None)
        if subscribe is not None:
            subscribe(lambda *_: self.gateway.registry_changed())
        return view

    def _handler(self, kind: str):  # type: ignore[no-untyped-def]
        def handle(event: str, resource: Resource) -> None:
            from mezzo.resources.kinds import KindSpec  # noqa: F401  (kept for type readers)

            spec_model = next(k.spec for k in KINDS if k.kind == kind)
            spec = None if event == "DELETED" else spec_model.model_validate(resource.spec)
            self.gateway.changed(kind, event, resource.metadata.namespace, resource.metadata.name, spec,
                                 resource.metadata.resourceVersion or 0)
        return handle

    async def stop(self) -> None:
        for informer in self.informers:
            await informer.stop()
        await self.gateway.close()

    async def health(self) -> Health:
        snap = self.gateway.snapshot
        return Health(True, f"{len(self.gateway.items['Route'])} routes, {len(snap.upstreams)} upstreams, "
                            f"{len(self.gateway.connections)} connections")

    def listeners(self) -> list[Any]:
        return [GatewayListener("gateway", self.gateway, self.sock, self.node.settings.drain_timeout)]


def with_reuseport(sock: socket.socket) -> None:
    if hasattr(socket, "SO_REUSEPORT"):
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        except OSError:
            pass


class GatewayListener:
    """Serves the data plane on a bound socket; on close, stops accepting and lets requests finish."""

    def __init__(self, name: str, gateway: Gateway, sock: socket.socket, drain_timeout: float) -> None:
        self.name = name
        self.gateway = gateway
        self.sock = sock
        self.url = url_of(sock)
        self.drain_timeout = drain_timeout
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: ClientConnection(self.gateway), sock=self.sock, backlog=2048)

    def force(self) -> None:
        for conn in list(self.gateway.connections):
            conn.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        deadline = asyncio.get_running_loop().time() + self.drain_timeout
        while any(c._busy for c in self.gateway.connections) and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # a short poll, during shutdown only
        self.force()
        self.sock.close()
