"""The ``cache`` module: the embedded engine, its Redis-protocol listener on :6380 (a proxy for
distributed namespaces), expiry, snapshots, and the Cache resources that configure namespaces."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import structlog
from pydantic import ValidationError

from mezzo.cache.distributed.namespaces import CacheNamespaces
from mezzo.cache.engine import Engine, SnapshotDamaged
from mezzo.cache.model import CACHE_KIND, CacheSpec, cache_namespace
from mezzo.cache.proxy import ProxyServer
from mezzo.cache.server import CacheServer
from mezzo.cache.stats import register_metrics
from mezzo.node.auth import TokenService
from mezzo.node.module import Health, Module
from mezzo.node.server import bind, url_of
from mezzo.resources.informer import Informer
from mezzo.resources.model import Resource
from mezzo.resources.service import ResourceService
from mezzo.telemetry.metrics import Metrics

log = structlog.get_logger("mezzo.cache")
SWEEP_EVERY = 0.1
SNAPSHOT = "cache.snapshot"


class CacheModule(Module):
    name = "cache"
    kinds = (CACHE_KIND,)

    async def start(self) -> None:
        settings = self.node.settings
        self.engine = Engine()
        self.snapshot = settings.data_dir / SNAPSHOT
        if settings.cache_snapshot:
            try:
                loaded = await asyncio.to_thread(self.engine.load, self.snapshot)
            except SnapshotDamaged as exc:  # warm data is a bonus: start with what could be read
                loaded = exc.loaded
                log.error("cache snapshot damaged: started with the entries before the damage", error=str(exc),
                          keys=loaded)
            if loaded:
                log.info("cache snapshot loaded", keys=loaded)
        tokens = self.node.service(TokenService) if self.node.has(TokenService) else None
        self.server = ProxyServer(self.engine, tokens, require_auth=settings.cache_auth,
                                  metrics=self.node.service(Metrics))
        self.namespaces = CacheNamespaces(self.engine, self.server)
        self.node.provide(Engine, self.engine)
        self.node.provide(CacheServer, self.server)
        self.node.provide(CacheNamespaces, self.namespaces)
        metrics = self.node.service(Metrics)
        collector = getattr(metrics, "_mezzo_cache_collector", None)
        if collector is None:
            collector = metrics._mezzo_cache_collector = _SpaceCollector()  # type: ignore[attr-defined]
            metrics.registry.register(collector)
        collector.engine = self.engine
        nodes = getattr(metrics, "_mezzo_cache_node_collector", None)
        if nodes is None:
            nodes = metrics._mezzo_cache_node_collector = _NodeCollector()  # type: ignore[attr-defined]
            metrics.registry.register(nodes)
        nodes.namespaces = self.namespaces
        register_metrics(metrics, self.engine)  # ops, hit ratio, ops/s, hot and big keys (cache/stats.py)
        self.sock = bind(settings.host, settings.resp_port)
        self._sweeper = asyncio.create_task(self._sweep(), name="mezzo-cache-expiry")
        self.informer: Informer | None = None
        if self.node.has(ResourceService):
            self.informer = Informer(self.node.service(ResourceService), CACHE_KIND.kind, self._on_cache)
            await self.informer.start()

    async def _on_cache(self, event: str, resource: Resource) -> None:
        namespace = cache_namespace(resource.metadata.namespace, resource.metadata.name)
        if event == "DELETED":
            await self.namespaces.remove(namespace)
        else:
            try:
                spec = CacheSpec.model_validate(resource.spec)
            except ValidationError as exc:  # stored by an older Mezzo; its input may hold a URL's password
                log.error("cache resource does not validate: not applied", resource=resource.ref,
                          errors=exc.errors(include_url=False, include_input=False, include_context=False))
                return
            await self.namespaces.apply(namespace, spec, resource.metadata.createdAt)

    async def stop(self) -> None:
        if self.informer is not None:
            await self.informer.stop()
        self._sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sweeper
        await self.namespaces.close()
        if self.node.settings.cache_snapshot:
            saved = await asyncio.to_thread(self.engine.save, self.snapshot)
            log.info("cache snapshot saved", keys=saved)

    async def health(self) -> Health:
        keys = sum(len(ks.data) for ks in self.engine.spaces.values())
        distributed = len(self.server.router.backends)
        return Health(not self._sweeper.done(), f"{keys} keys, {len(self.server.clients)} clients, "
                      f"{distributed} distributed namespaces")

    def routers(self) -> list[Any]:
        from mezzo.cache.api import router
        from mezzo.cache.distributed.api import router as distributed

        return [router, distributed]

    def listeners(self) -> list[Any]:
        return [RespListener("resp", self.server, self.sock)]

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            self.engine.sweep()


class RespListener:
    def __init__(self, name: str, server: CacheServer, sock: socket.socket) -> None:
        self.name = name
        self.server = server
        self.sock = sock
        self.url = url_of(sock, "redis")
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.server.protocol, sock=self.sock, backlog=2048)

    def force(self) -> None:
        for conn in list(self.server.clients.values()):
            if conn.transport is not None:
                conn.transport.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.force()
        self.sock.close()


class _SpaceCollector:
    """Per-namespace keys, memory, hits, misses and evictions, read at scrape time."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        keys = GaugeMetricFamily("mezzo_cache_keys", "Keys held.", labels=["namespace"])
        memory = GaugeMetricFamily("mezzo_cache_memory_bytes", "Approximate memory held.", labels=["namespace"])
        hits = CounterMetricFamily("mezzo_cache_hits", "Lookups that found a key.", labels=["namespace"])
        misses = CounterMetricFamily("mezzo_cache_misses", "Lookups that did not.", labels=["namespace"])
        evictions = CounterMetricFamily("mezzo_cache_evictions", "Keys evicted for memory.", labels=["namespace"])
        for ks in list(self.engine.spaces.values()) if self.engine is not None else []:
            keys.add_metric([ks.name], len(ks.data))
            memory.add_metric([ks.name], ks.memory)
            hits.add_metric([ks.name], ks.hits)
            misses.add_metric([ks.name], ks.misses)
            evictions.add_metric([ks.name], ks.evictions)
        yield from (keys, memory, hits, misses, evictions)


class _NodeCollector:
    """Distributed namespaces: each node's state, ejections, replica takeovers, keys moved by rebalancing."""

    def __init__(self) -> None:
        self.namespaces: CacheNamespaces | None = None

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("mezzo_cache_node_up", "1 when a node of a distributed namespace takes traffic "
                               "(healthy or suspect), 0 when ejected.", labels=["namespace", "node"])
        ejections = CounterMetricFamily("mezzo_cache_node_ejections", "Nodes ejected after failures.",
                                        labels=["namespace"])
        takeovers = CounterMetricFamily("mezzo_cache_replica_takeovers", "Replicas promoted for a failed node.",
                                        labels=["namespace"])
        moved = GaugeMetricFamily("mezzo_cache_rebalance_moved_keys", "Keys moved by the current or last rebalance.",
                                  labels=["namespace"])
        backends = self.namespaces.router.backends if self.namespaces is not None else {}
        for namespace, backend in list(backends.items()):
            status = backend.status()
            for node in status.get("nodes", []):
                up.add_metric([namespace, node["name"]], 0 if node.get("state") == "ejected" else 1)
            if "ejections" in status:
                ejections.add_metric([namespace], status["ejections"])
                takeovers.add_metric([namespace], status["takeovers"])
            if status.get("rebalance"):
                moved.add_metric([namespace], status["rebalance"].get("moved", 0))
        yield from (up, ejections, takeovers, moved)
