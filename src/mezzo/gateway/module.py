"""The ``gateway`` module: the data plane on the gateway port, configured by resources."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import structlog
from prometheus_client.core import GaugeMetricFamily
from pydantic import ValidationError

from mezzo.gateway.client import TICK, ClientConnection, Limits
from mezzo.gateway.model import KINDS
from mezzo.gateway.runtime import Gateway
from mezzo.gateway.tls import CertStore
from mezzo.gateway.workers import WORKER_POLL, WorkerPool, follow_parent
from mezzo.node.module import Health, Module
from mezzo.node.server import bind, url_of
from mezzo.resilience.breaker import CircuitState
from mezzo.resilience.policies import PolicyRegistry
from mezzo.resources.informer import Informer
from mezzo.resources.kinds import UnsealError
from mezzo.resources.model import Resource
from mezzo.resources.service import ResourceService
from mezzo.storage.kv import KVStore
from mezzo.storage.sqlite import SQLiteStore
from mezzo.telemetry.metrics import Metrics
from mezzo.telemetry.tracing import Tracing

log = structlog.get_logger("mezzo.gateway")
SWEEP_EVERY = 5.0  # how often idle pooled upstream connections are looked at


class GatewayModule(Module):
    name = "gateway"
    kinds = KINDS

    async def start(self) -> None:
        settings = self.node.settings
        limits = Limits(max_header_bytes=settings.gateway_max_header_bytes, max_body=settings.gateway_max_body,
                        header_timeout=settings.gateway_header_timeout, body_timeout=settings.gateway_body_timeout,
                        keepalive_timeout=settings.gateway_keepalive_timeout)
        self._own_view: Any = None
        registry = await self._registry()
        cache = settings.cache if settings.cache.startswith(("redis://", "rediss://")) else None
        self.gateway = Gateway(limits, self.node.service(Metrics), registry, cache)
        self.gateway.tracing = self.node.service(Tracing) if self.node.has(Tracing) else None  # opentelemetry plugin
        self.node.provide(Gateway, self.gateway)
        self.certs = CertStore()
        self.gateway.on_certificates = self.certs.load
        resources = self.resources = self.node.service(ResourceService)
        self.workers: WorkerPool | None = None
        self._tasks: list[asyncio.Task[None]] = []
        if settings.gateway_worker:  # a worker: follow the main process's writes closely, and die with it
            store = self.node.service(KVStore)  # type: ignore[type-abstract]
            if isinstance(store, SQLiteStore):
                store.poll_interval = WORKER_POLL
            self._tasks.append(asyncio.create_task(follow_parent(self.node.request_stop), name="mezzo-worker-parent"))
        self.gateway.use_policies(self.node.service(PolicyRegistry))  # the resilience module: a dependency
        self.circuits = CircuitCollector(self.gateway)
        self.node.service(Metrics).registry.register(self.circuits)
        self.informers = [Informer(resources, kind.kind, self._handler(kind.kind)) for kind in KINDS]
        for informer in self.informers:
            await informer.start()
        # SO_REUSEPORT only with workers: a second node started by mistake still fails to bind
        shared = settings.gateway_workers > 1 or settings.gateway_worker > 0
        self.sock = bind(settings.host, settings.gateway_port, reuse_port=shared)
        self.tls_sock = bind(settings.host, settings.gateway_tls_port, reuse_port=shared)
        self._tasks.append(asyncio.create_task(self._tick(), name="mezzo-gateway-tick"))
        if settings.gateway_workers > 1 and not settings.gateway_worker:
            self.workers = WorkerPool(settings, settings.gateway_workers, self.sock.getsockname()[1],
                                      self.tls_sock.getsockname()[1])
            await self.workers.start()

    async def _tick(self) -> None:
        """The data plane's one clock: request and upstream timeouts, idle pooled connections."""
        loop = asyncio.get_running_loop()
        sweep = loop.time() + SWEEP_EVERY
        while True:
            await asyncio.sleep(TICK)
            now = loop.time()
            for conn in list(self.gateway.connections):
                try:
                    conn.tick(now)
                except Exception:
                    log.exception("gateway connection clock failed")
            if now >= sweep:
                sweep = now + SWEEP_EVERY
                try:
                    self.gateway.expire_idle()
                except Exception:
                    log.exception("gateway sweep failed")

    async def _registry(self) -> Any:
        """The node's registry view; on a node without the registry module (``--targets gateway``, a
        worker process) a read-only view of its own over the shared store, so ``service:`` upstreams
        get their nodes there too (no checks, expiry or membership: the registry's nodes do those)."""
        try:
            from mezzo.registry.service import RegistryService
            from mezzo.registry.view import RegistryView
        except ImportError:
            return None
        if self.node.has(RegistryView):
            view = self.node.service(RegistryView)
        else:
            view = self._own_view = RegistryView(RegistryService(self.node.service(KVStore)))  # type: ignore[type-abstract]
            await view.start()
        subscribe = getattr(view, "subscribe", None)
        if subscribe is not None:
            subscribe(lambda *_: self.gateway.registry_changed())
        return view

    def _handler(self, kind: str):  # type: ignore[no-untyped-def]
        spec_model = next(k.spec for k in KINDS if k.kind == kind)

        def handle(event: str, resource: Resource) -> None:
            try:  # secrets sealed at rest are opened here, for the data plane only
                spec = None if event == "DELETED" else spec_model.model_validate(self.resources.unsealed(resource))
            except UnsealError as exc:  # sealed with keys this node does not have, or moved: fail closed
                log.error("gateway resource's secrets do not decrypt: taken out of service", kind=kind,
                          resource=resource.ref, reason=str(exc))
                event, spec = "DELETED", None
            except ValidationError as exc:  # stored by an older Mezzo under looser rules: fail closed
                log.error("gateway resource does not validate: taken out of service", kind=kind,
                          resource=resource.ref, errors=exc.errors(include_url=False, include_input=False,
                                                                   include_context=False))
                event, spec = "DELETED", None
            self.gateway.changed(kind, event, resource.metadata.namespace, resource.metadata.name, spec,
                                 resource.metadata.resourceVersion or 0)
        return handle

    async def stop(self) -> None:
        if self.workers is not None:
            await self.workers.stop(self.node.settings.drain_timeout + 5)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for informer in self.informers:
            await informer.stop()
        if self._own_view is not None:
            await self._own_view.stop()
        with contextlib.suppress(KeyError):
            self.node.service(Metrics).registry.unregister(self.circuits)
        await self.gateway.close()

    async def health(self) -> Health:
        snap = self.gateway.snapshot
        detail = (f"{len(self.gateway.items['Route'])} routes, {len(snap.upstreams)} upstreams, "
                  f"{len(self.gateway.connections)} connections")
        if self.workers is not None:
            detail += f", {self.workers.running + 1}/{self.workers.count} processes"
        if self.gateway.broken:  # still ready: the rest serves; these are logged with their reasons
            detail += f", out of service (failed to build): {', '.join(sorted(self.gateway.broken))}"
        if self.gateway.stuck:  # not ready: no change applies until this is fixed or deleted
            reasons = "; ".join(f"{ref}: {reason}" for ref, reason in sorted(self.gateway.stuck.items()))
            return Health(False, f"configuration stuck at an earlier revision, no gateway change applies until "
                                 f"this is fixed or deleted: {reasons} ({detail})")
        if self._own_view is not None and not self._own_view.following:
            return Health(False, "registry watch stopped: service-backed upstreams would go stale")
        return Health(True, detail)

    def api_front(self, app: Any, api: Any) -> Any:
        """Lets plugin schemas know this node's Redis URL while the API validates resources, so a
        Redis-backed plugin setting without one is refused at apply time (see shared_redis)."""
        from mezzo.gateway.plugins.shared_redis import NodeRedisFront

        return NodeRedisFront(app, self.gateway.redis_url)

    def listeners(self) -> list[Any]:
        drain = self.node.settings.drain_timeout
        return [GatewayListener("gateway", self.gateway, self.sock, drain),
                GatewayListener("gateway-tls", self.gateway, self.tls_sock, drain, self.certs.server)]


class CircuitCollector:
    """``mezzo_gateway_upstream_circuit_state{namespace, upstream, state}``: 1 for the state the
    circuit breaker of an upstream's Resiliency policy is in, 0 for the others; read at scrape time."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily("mezzo_gateway_upstream_circuit_state",
                                   "State of the circuit breaker a Resiliency policy puts on an upstream.",
                                   labels=("namespace", "upstream", "state"))
        for ref, balancer in list(self.gateway.snapshot.upstreams.items()):
            breaker = balancer.policy.breaker if balancer.policy is not None else None
            if breaker is not None:
                namespace, name = ref.split("/", 1)
                current = breaker.state
                for state in CircuitState:
                    family.add_metric((namespace, name, state.value), 1.0 if state is current else 0.0)
        yield family

    def describe(self) -> list[Any]:
        return []  # known at scrape time only


class GatewayListener:
    """Serves the data plane on a bound socket; on close, stops accepting and lets requests finish."""

    def __init__(self, name: str, gateway: Gateway, sock: socket.socket, drain_timeout: float,
                 tls: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.gateway = gateway
        self.sock = sock
        self.tls = tls
        self.url = url_of(sock, "https" if tls is not None else "http")
        self.drain_timeout = drain_timeout
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        scheme = "https" if self.tls is not None else "http"
        tls: dict[str, Any] = {"ssl": self.tls, "ssl_handshake_timeout": 10.0} if self.tls is not None else {}
        self.server = await loop.create_server(lambda: ClientConnection(self.gateway, scheme), sock=self.sock,
                                               backlog=2048, **tls)

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
