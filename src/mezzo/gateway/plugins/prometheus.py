"""prometheus: request counts, latency and bytes per route, upstream and status, on /metrics of the API port."""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from mezzo.gateway.plugins import Config, Ctx, Plugin, register


class PrometheusConfig(Config):
    prefer_name: bool = Field(True, description="label routes by name (else by namespace/name)")


class _Meters:
    """The gateway's metric families, created once per metrics registry."""

    def __init__(self, metrics: Any) -> None:
        labels = ("route", "upstream", "node", "code")
        self.requests = metrics.counter("gateway", "requests", "total", "Requests through the gateway.", labels=labels)
        self.latency = metrics.histogram("gateway", "request_duration", "seconds",
                                         "From the request's headers to the end of the response.",
                                         labels=("route", "upstream"),
                                         buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.bytes = metrics.counter("gateway", "response", "bytes", "Response body bytes sent to clients.",
                                     labels=("route", "upstream"))
        self.children: dict[tuple[str, ...], Any] = {}

    def child(self, family: Any, *labels: str) -> Any:
        key = (id(family), *labels)
        found = self.children.get(key)  # type: ignore[arg-type]
        if found is None:
            found = self.children[key] = family.labels(*labels)  # type: ignore[index]
        return found


@register
class Prometheus(Plugin):
    name = "prometheus"
    priority = 500
    schema = PrometheusConfig

    def __init__(self, conf: PrometheusConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        metrics = runtime.metrics
        self.meters = getattr(metrics, "_mezzo_gateway_meters", None) if metrics is not None else None
        if metrics is not None and self.meters is None:
            self.meters = metrics._mezzo_gateway_meters = _Meters(metrics)

    def log(self, ctx: Ctx) -> None:
        meters = self.meters
        if meters is None:
            return
        route = ctx.route.name if self.conf.prefer_name else ctx.route.ref
        upstream = ctx.upstream.name.split("/", 1)[-1] if ctx.upstream is not None else ""
        node = ctx.node.key if ctx.node is not None else ""
        meters.child(meters.requests, route, upstream, node, str(ctx.status)).inc()
        meters.child(meters.latency, route, upstream).observe(time.monotonic() - ctx.started)
        if ctx.bytes_sent:
            meters.child(meters.bytes, route, upstream).inc(ctx.bytes_sent)
