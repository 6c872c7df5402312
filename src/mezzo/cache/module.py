"""The ``cache`` module: the embedded engine, its Redis-protocol listener on :6380, expiry and snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import structlog

from mezzo.cache.engine import Engine
from mezzo.cache.server import CacheServer
from mezzo.node.auth import TokenService
from mezzo.node.module import Health, Module
from mezzo.node.server import bind, url_of
from mezzo.telemetry.metrics import Metrics

log = structlog.get_logger("mezzo.cache")
SWEEP_EVERY = 0.1
SNAPSHOT = "cache.snapshot"


class CacheModule(Module):
    name = "cache"

    async def start(self) -> None:
        settings = self.node.settings
        self.engine = Engine()
        self.snapshot = settings.data_dir / SNAPSHOT
        if settings.cache_snapshot:
            loaded = await asyncio.to_thread(self.engine.load, self.snapshot)
            if loaded:
                log.info("cache snapshot loaded", keys=loaded)
        tokens = self.node.service(TokenService) if self.node.has(TokenService) else None
        self.server = CacheServer(self.engine, tokens, require_auth=settings.cache_auth,
                                  metrics=self.node.service(Metrics))
        self.node.provide(Engine, self.engine)
        self.node.provide(CacheServer, self.server)
        metrics = self.node.service(Metrics)
        collector = getattr(metrics, "_mezzo_cache_collector", None)
        if collector is None:
            collector = metrics._mezzo_cache_collector = _SpaceCollector()  # type: ignore[attr-defined]
            metrics.registry.register(collector)
        collector.engine = self.engine
        self.sock = bind(settings.host, settings.resp_port)
        self._sweeper = asyncio.create_task(self._sweep(), name="mezzo-cache-expiry")

    async def stop(self) -> None:
        self._sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sweeper
        if self.node.settings.cache_snapshot:
            saved = await asyncio.to_thread(self.engine.save, self.snapshot)
            log.info("cache snapshot saved", keys=saved)

    async def health(self) -> Health:
        keys = sum(len(ks.data) for ks in self.engine.spaces.values())
        return Health(not self._sweeper.done(), f"{keys} keys, {len(self.server.clients)} clients")

    def routers(self) -> list[Any]:
        from mezzo.cache.api import router

        return [router]

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
