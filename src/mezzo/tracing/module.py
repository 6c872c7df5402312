"""The ``tracing`` module: the trace store, the collector and its listeners (OTLP :4318, Zipkin :9411)."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from fastapi import APIRouter

from mezzo.node.module import Health, Module
from mezzo.node.server import HttpListener, bind
from mezzo.resources.informer import Informer
from mezzo.resources.model import Resource
from mezzo.resources.service import ResourceService
from mezzo.telemetry.metrics import Metrics
from mezzo.tracing.collector import Collector
from mezzo.tracing.sampling import SAMPLING_KIND, SamplingSpec, Strategies
from mezzo.tracing.store import TraceStore
from mezzo.tracing.tail import TAIL_SAMPLING_KIND, TailSampler, TailSamplingSpec

log = structlog.get_logger("mezzo.tracing")
RETENTION_EVERY = 60.0


class TracingModule(Module):
    name = "tracing"
    kinds = (SAMPLING_KIND, TAIL_SAMPLING_KIND)

    async def start(self) -> None:
        settings = self.node.settings
        url = settings.trace_store or ("sqlite" if not settings.store or settings.store.startswith("sqlite")
                                       else settings.store)
        if url.startswith(("postgresql://", "postgres://")):
            from mezzo.tracing.store_postgres import PostgresTraceStore

            self.store = PostgresTraceStore(url)  # type: ignore[assignment]
        else:
            self.store = TraceStore(settings.data_dir / "traces.db")
        await self.store.open()
        self.node.provide(TraceStore, self.store)
        self.collector = Collector(self.store, self.node.service(Metrics))
        self.node.provide(Collector, self.collector)
        self.otlp_sock = bind(settings.host, settings.otlp_port)
        self.zipkin_sock = bind(settings.host, settings.zipkin_port)
        self._retention = asyncio.create_task(self._enforce(), name="mezzo-traces-retention")
        self.strategies = Strategies()
        self.node.provide(Strategies, self.strategies)
        self.informer = Informer(self.node.service(ResourceService), SAMPLING_KIND.kind, self._sampling)
        await self.informer.start()
        self._tail_policies: dict[str, TailSamplingSpec] = {}
        self.tail_informer = Informer(self.node.service(ResourceService), TAIL_SAMPLING_KIND.kind, self._tail)
        await self.tail_informer.start()

    async def _tail(self, event: str, resource: Resource) -> None:
        """One policy applies: the first by namespace/name; none means every span is stored."""
        ref = f"{resource.metadata.namespace}/{resource.metadata.name}"
        if event == "DELETED":
            self._tail_policies.pop(ref, None)
        else:
            self._tail_policies[ref] = TailSamplingSpec.model_validate(resource.spec)
        old = self.collector.tail
        spec = self._tail_policies[min(self._tail_policies)] if self._tail_policies else None
        if old is not None and spec == old.spec:
            return
        self.collector.tail = None
        if old is not None:
            await old.stop()
            await old.flush(float("inf"))  # decide what it held under the old policy
        if spec is not None:
            sampler = TailSampler(spec, self.store.write, self.collector.metrics)
            sampler.start()
            self.collector.tail = sampler

    def _sampling(self, event: str, resource: Resource) -> None:
        ref = f"{resource.metadata.namespace}/{resource.metadata.name}"
        self.strategies.set(None if event == "DELETED" else SamplingSpec.model_validate(resource.spec), ref)

    async def stop(self) -> None:
        await self.informer.stop()
        await self.tail_informer.stop()
        if self.collector.tail is not None:
            await self.collector.tail.stop()
            await self.collector.tail.flush(float("inf"))
        self._retention.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._retention
        await self.store.close()

    async def health(self) -> Health:
        return Health(True, f"{self.store.written} spans written, {self.store.pending} pending")

    def routers(self) -> list[APIRouter]:
        from mezzo.tracing.api import router

        return [router]

    def listeners(self) -> list[HttpListener]:
        from mezzo.tracing.api import otlp_app, zipkin_app

        drain = self.node.settings.drain_timeout
        return [HttpListener("otlp", otlp_app(self.node), self.otlp_sock, drain_timeout=drain, closes_last=True),
                HttpListener("zipkin", zipkin_app(self.node), self.zipkin_sock, drain_timeout=drain)]

    async def _enforce(self) -> None:
        settings = self.node.settings
        while True:
            await asyncio.sleep(RETENTION_EVERY)
            try:
                gone = await self.store.enforce_retention(settings.trace_retention, settings.trace_max_spans,
                                                          settings.trace_max_bytes)
                if gone:
                    log.info("old spans removed", spans=gone)
            except Exception:
                log.exception("trace retention failed")
