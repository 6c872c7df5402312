"""Messaging metrics: counters per topic and group, delivery latency, and lag read from the broker at scrape time."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mezzo.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from mezzo.messaging.backend import Broker

EVENTS = ("published", "delivered", "acked", "nacked", "redelivered", "dead_lettered", "dropped", "expired",
          "filtered", "half_committed", "half_rolled_back", "half_abandoned")
LABELS = ("namespace", "topic", "group")


class MessagingMetrics:
    def __init__(self, metrics: Metrics | None, broker: Broker) -> None:
        self._counters = {}
        self._children: dict[tuple[str, str, str, str], object] = {}
        self._latency = None
        if metrics is None:
            return
        for event in EVENTS:
            self._counters[event] = metrics.counter("messaging", event, "total", f"Messages {event.replace('_', ' ')}.", labels=LABELS)
        self._latency = metrics.histogram(
            "messaging", "delivery_latency", "seconds", "From publish (or due time) to first delivery.",
            labels=LABELS, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        collector = getattr(metrics, "_mezzo_messaging_collector", None)
        if collector is None:
            collector = _GroupCollector()
            metrics.registry.register(collector)
            metrics._mezzo_messaging_collector = collector  # type: ignore[attr-defined]
            metrics.on_scrape(collector.refresh)
        collector.broker = broker

    def count(self, event: str, namespace: str, topic: str, group: str = "", n: int = 1) -> None:
        if n and event in self._counters:
            self._child(event, namespace, topic, group).inc(n)

    def delivered_after(self, seconds: list[float], namespace: str, topic: str, group: str) -> None:
        """Observe the delivery latency of each message of a batch."""
        if self._latency is not None and seconds:
            observe_many(self._child("latency", namespace, topic, group), seconds)

    def _child(self, event: str, namespace: str, topic: str, group: str):  # type: ignore[no-untyped-def]
        # labels() hashes and locks on every call; the hot path looks children up once
        key = (event, namespace, topic, group)
        child = self._children.get(key)
        if child is None:
            parent = self._latency if event == "latency" else self._counters[event]
            child = self._children[key] = parent.labels(namespace, topic, group)  # type: ignore[union-attr]
        return child


def observe_many(histogram: Any, values: list[float]) -> None:
    """``histogram.observe(v)`` for every value, with one bucket increment per bucket hit.

    A batch of deliveries is a thousand observations, each taking a lock per bucket and
    for the sum: this counts them locally first. It relies on the client's bucket layout
    (``_upper_bounds``, ``_buckets``, ``_sum`` in prometheus_client 0.26; a unit test compares
    the result with ``observe``) and falls back to plain observations when that is not there."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(max(value, 0.0))
        return
    hits = Counter(bisect_left(bounds, value) for value in values)  # first bucket with value <= bound
    for index, n in hits.items():
        buckets[index].inc(n)
    total.inc(sum(max(value, 0.0) for value in values))


class _GroupCollector(Collector):
    """Lag and sizes, read from the broker (which may be remote) just before each scrape."""

    def __init__(self) -> None:
        self.broker: Broker | None = None
        self._sizes: list[tuple[list[str], int]] = []
        self._groups: list[tuple[list[str], int, int]] = []

    async def refresh(self) -> None:
        if self.broker is None:
            return
        sizes, groups = [], []
        for ref in self.broker.topics():
            namespace, topic = ref.split("/", 1)
            sizes.append(([namespace, topic], (await self.broker.topic_stats(ref)).messages))
            for group in await self.broker.groups(ref):
                stats = await self.broker.group_stats(ref, group)
                groups.append(([namespace, topic, group], stats.lag, stats.in_flight))
        self._sizes, self._groups = sizes, groups

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily("mezzo_messaging_lag_messages", "Messages not yet acked by a group.", labels=LABELS)
        flight = GaugeMetricFamily("mezzo_messaging_in_flight_messages", "Delivered, not yet acked.", labels=LABELS)
        size = GaugeMetricFamily("mezzo_messaging_stored_messages", "Messages retained in a topic.", labels=LABELS[:2])
        for labels, messages in self._sizes:
            size.add_metric(labels, messages)
        for labels, behind, in_flight in self._groups:
            lag.add_metric(labels, behind)
            flight.add_metric(labels, in_flight)
        yield lag
        yield flight
        yield size
