"""prometheus: request counts, latency and bytes per route, upstream and status, on /metrics of the API port.

A request only adds to plain dicts of ints in the log phase (no prometheus-client call, no lock):
the families are built from them when /metrics is scraped, by a collector on the node's registry.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from pydantic import Field

from mezzo.gateway.plugins import Config, Ctx, Plugin, register

BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class PrometheusConfig(Config):
    prefer_name: bool = Field(True, description="label routes by name (else by namespace/name)")


class Counts:
    """Every prometheus plugin instance of one node counts here; rendered at scrape time."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, int], int] = {}  # (route, upstream, node, status)
        # (route, upstream) -> [count per bucket (not cumulative; the last one is +Inf), sum of seconds]
        self.latency: dict[tuple[str, str], list[Any]] = {}
        self.bytes: dict[tuple[str, str], int] = {}

    def add(self, route: str, upstream: str, node: str, status: int, seconds: float, sent: int) -> None:
        key = (route, upstream, node, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        pair = (route, upstream)
        latency = self.latency.get(pair)
        if latency is None:
            latency = self.latency[pair] = [[0] * (len(BUCKETS) + 1), 0.0]
        latency[0][bisect_left(BUCKETS, seconds)] += 1  # "le" buckets: a value on a bound counts in it
        latency[1] += seconds
        if sent:
            self.bytes[pair] = self.bytes.get(pair, 0) + sent

    def collect(self) -> Iterator[Any]:
        requests = CounterMetricFamily("mezzo_gateway_requests", "Requests through the gateway.",
                                       labels=("route", "upstream", "node", "code"))
        for (route, upstream, node, status), count in list(self.requests.items()):
            requests.add_metric((route, upstream, node, str(status)), count)
        latency = HistogramMetricFamily("mezzo_gateway_request_duration_seconds",
                                        "From the request's headers to the end of the response.",
                                        labels=("route", "upstream"), unit="seconds")
        for pair, (counts, total) in list(self.latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), list(counts), strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric(pair, buckets, total)
        sent = CounterMetricFamily("mezzo_gateway_response_bytes", "Response body bytes sent to clients.",
                                   labels=("route", "upstream"), unit="bytes")
        for pair, count in list(self.bytes.items()):
            sent.add_metric(pair, count)
        yield from (requests, latency, sent)

    def describe(self) -> list[Any]:
        return []  # families are only known at scrape time: no clash check at registration


def counts_for(metrics: Any) -> Counts:
    """The node's one ``Counts``, registered on its metrics registry the first time it is asked for."""
    counts: Counts | None = getattr(metrics, "_mezzo_gateway_counts", None)
    if counts is None:
        counts = metrics._mezzo_gateway_counts = Counts()
        metrics.registry.register(counts)
    return counts


@register
class Prometheus(Plugin):
    name = "prometheus"
    priority = 500
    schema = PrometheusConfig

    def __init__(self, conf: PrometheusConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        metrics = runtime.metrics
        self.counts = counts_for(metrics) if metrics is not None else None
        if self.counts is None:
            self.log = _ignore  # type: ignore[method-assign]

    def log(self, ctx: Ctx) -> None:
        route = ctx.route
        upstream = ctx.upstream
        node = ctx.node
        self.counts.add(route.name if self.conf.prefer_name else route.ref,  # type: ignore[union-attr]
                        upstream.short_name if upstream is not None else "",
                        node.key if node is not None else "", ctx.status,
                        time.monotonic() - ctx.started, ctx.bytes_sent)


def _ignore(ctx: Ctx) -> None:
    return None
