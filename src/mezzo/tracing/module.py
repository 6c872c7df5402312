"""The ``tracing`` module: the trace store, the collector and its listeners (OTLP/HTTP :4318, OTLP/gRPC :4317,
Zipkin :9411)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from fastapi import APIRouter

from mezzo.node.module import Health, Listener, Module
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


def otlp_grpc_listener(collector: Collector, settings: Any) -> Listener | None:
    """OTLP/gRPC on ``MEZZO_OTLP_GRPC_PORT``, when it is not ``off`` and grpcio is installed (imported only
    here: a node without it, and the CLI, never load gRPC)."""
    if settings.otlp_grpc_port is None:
        return None
    try:
        from mezzo.tracing.otlp_grpc import OtlpGrpcListener
    except Exception as exc:  # not installed, or a grpcio/protobuf that does not fit: the node runs without it
        log.info("OTLP/gRPC not served: install mezzo[grpc] to serve it (or set MEZZO_OTLP_GRPC_PORT=off)",
                 error=f"{type(exc).__name__}: {exc}")
        return None
    return OtlpGrpcListener(collector, settings.host, settings.otlp_grpc_port, settings.drain_timeout)


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
        try:
            self.otlp_grpc = otlp_grpc_listener(self.collector, settings)
        except BaseException:  # e.g. its port is taken: the node does not start, and stops only started modules
            self.otlp_sock.close()
            self.zipkin_sock.close()
            await self.store.close()
            raise
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
        if self.otlp_grpc is not None:  # closed by the node already, unless the node failed to start
            await self.otlp_grpc.close()
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

    def listeners(self) -> list[Listener]:
        from mezzo.tracing.api import otlp_app, zipkin_app

        drain = self.node.settings.drain_timeout
        listeners: list[Listener] = [
            HttpListener("otlp", otlp_app(self.node), self.otlp_sock, drain_timeout=drain, closes_last=True),
            HttpListener("zipkin", zipkin_app(self.node), self.zipkin_sock, drain_timeout=drain)]
        if self.otlp_grpc is not None:
            listeners.append(self.otlp_grpc)
        return listeners

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
