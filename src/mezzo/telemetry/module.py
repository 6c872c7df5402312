"""The ``telemetry`` module: the node's metrics registry and its own tracer provider."""

from __future__ import annotations

import asyncio

from mezzo.node.module import Health, Module
from mezzo.telemetry.metrics import Metrics
from mezzo.telemetry.tracing import Tracing

QUIESCE_FLUSH_MS = 5_000  # how long a stop waits for the node's last spans to reach their collector


class TelemetryModule(Module):
    name = "telemetry"

    async def start(self) -> None:
        settings = self.node.settings
        self.metrics = Metrics()
        endpoint = settings.tracing_endpoint or f"http://{settings.host}:{settings.otlp_port}"
        self.tracing = Tracing("mezzo", exporter=settings.tracing, otlp_endpoint=endpoint)
        self.node.provide(Metrics, self.metrics)
        self.node.provide(Tracing, self.tracing)

    async def quiesce(self) -> None:
        if self.node.settings.tracing != "none":  # export in a thread: the collector may be this node
            await asyncio.to_thread(self.tracing.force_flush, QUIESCE_FLUSH_MS)

    async def stop(self) -> None:
        self.tracing.shutdown()

    async def health(self) -> Health:
        return Health(True, f"tracing: {self.node.settings.tracing}")
