"""prometheus: request counts, latency and bytes per route, upstream and status, on /metrics of the API port.

A request only adds to plain lists of ints in the log phase (no prometheus-client call, no lock),
found by its labels in one dict lookup: the families are built from them when /metrics is scraped,
by a collector on the node's registry.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from time import monotonic
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from pydantic import Field

from mezzo.gateway.plugins import Config, Ctx, Plugin, register

BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class PrometheusConfig(Config):
    prefer_name: bool = Field(True, description="label routes by name (else by namespace/name)")


_SUM = len(BUCKETS) + 1  # where a latency list keeps its sum of seconds, after its per-bucket counts
_FIRST = BUCKETS[0]


class Counts:
    """Every prometheus plugin instance of one node counts here; rendered at scrape time.

    A request adds to one "cell", found by its labels in one dict lookup: a list of its request
    count, its (route, upstream)'s latency list and bytes list, and that pair. The dicts below keep
    series in the order they first counted, as the scrape shows them."""

    def __init__(self) -> None:
        # (route, upstream, node, status) -> [requests, latency list, bytes list, (route, upstream)]
        self.requests: dict[tuple[str, str, str, int], list[Any]] = {}
        # (route, upstream) -> [count per bucket (not cumulative; the last one is +Inf)..., sum of seconds]
        self.latency: dict[tuple[str, str], list[Any]] = {}
        # (route, upstream) -> [bytes], once the pair sent any (a pair that sent none has no series)
        self.bytes: dict[tuple[str, str], list[int]] = {}
        self._bytes: dict[tuple[str, str], list[int]] = {}  # every pair's bytes list, listed or not

    def cell(self, key: tuple[str, str, str, int]) -> list[Any]:
        """The cell of ``key``, made when it counts for the first time."""
        cell = self.requests.get(key)
        if cell is None:
            pair = key[:2]
            latency = self.latency.get(pair)
            if latency is None:
                latency = self.latency[pair] = [0] * (len(BUCKETS) + 1) + [0.0]
                self._bytes[pair] = [0]
            cell = self.requests[key] = [0, latency, self._bytes[pair], pair]
        return cell

    def add(self, route: str, upstream: str, node: str, status: int, seconds: float, sent: int) -> None:
        """Count one request (what the plugin's log phase does, inlined there)."""
        cell = self.cell((route, upstream, node, status))
        cell[0] += 1
        latency = cell[1]
        latency[bisect_left(BUCKETS, seconds)] += 1  # "le" buckets: a value on a bound counts in it
        latency[_SUM] += seconds
        if sent:
            total = cell[2]
            if not total[0]:
                self.bytes[cell[3]] = total
            total[0] += sent

    def collect(self) -> Iterator[Any]:
        requests = CounterMetricFamily("mezzo_gateway_requests", "Requests through the gateway.",
                                       labels=("route", "upstream", "node", "code"))
        for (route, upstream, node, status), cell in list(self.requests.items()):
            requests.add_metric((route, upstream, node, str(status)), cell[0])
        latency = HistogramMetricFamily("mezzo_gateway_request_duration_seconds",
                                        "From the request's headers to the end of the response.",
                                        labels=("route", "upstream"), unit="seconds")
        for pair, counts in list(self.latency.items()):
            counts = list(counts)
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), counts[:_SUM], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric(pair, buckets, counts[_SUM])
        sent = CounterMetricFamily("mezzo_gateway_response_bytes", "Response body bytes sent to clients.",
                                   labels=("route", "upstream"), unit="bytes")
        for pair, total in list(self.bytes.items()):
            sent.add_metric(pair, total[0])
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
        else:
            self.cells = self.counts.requests
            self.by_name = conf.prefer_name

    def log(self, ctx: Ctx) -> None:
        """Counts.add, inlined: one dict lookup by the request's labels, then plain list updates."""
        route = ctx.route
        upstream = ctx.upstream
        node = ctx.node
        key = (route.name if self.by_name else route.ref, upstream.short_name if upstream is not None else "",
               node.key if node is not None else "", ctx.status)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.counts.cell(key)  # type: ignore[union-attr]
        seconds = monotonic() - ctx.started
        cell[0] += 1
        latency = cell[1]
        # "le" buckets: a value on a bound counts in it; most answers take less than the first one
        latency[0 if seconds <= _FIRST else bisect_left(BUCKETS, seconds)] += 1
        latency[_SUM] += seconds
        sent = ctx.bytes_sent
        if sent:
            total = cell[2]
            if not total[0]:
                self.counts.bytes[cell[3]] = total  # type: ignore[union-attr]
            total[0] += sent


def _ignore(ctx: Ctx) -> None:
    return None
