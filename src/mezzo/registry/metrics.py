"""Registry metrics: instances per service and status (read from the view at scrape time), changes,
heartbeats (and how many of them reached the store) and probes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mezzo.telemetry.metrics import Metrics

Counts = Callable[[], Iterable[tuple[str, str, str, int]]]  # (namespace, service, status, instances)


class RegistryMetrics:
    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics
        self._children: dict[tuple[str, str, str, str], Any] = {}
        if metrics is None:
            return
        labels = ("namespace", "service")
        self._counters = {
            "change": metrics.counter("registry", "changes", "total",
                                      "Registrations, deregistrations, expiries and status flips.",
                                      labels=(*labels, "change")),
            "heartbeat": metrics.counter("registry", "heartbeats", "total",
                                         "Heartbeats by outcome: renewed (a store write), coalesced "
                                         "(no write needed), unknown (404).", labels=(*labels, "outcome")),
            "probe": metrics.counter("registry", "probes", "total", "Active health check probes by result.",
                                     labels=(*labels, "result")),
        }

    def count_instances(self, counts: Counts) -> None:
        """Expose ``mezzo_registry_registered_instances`` from ``counts()`` at every scrape."""
        if self._metrics is None:
            return
        collector = getattr(self._metrics, "_mezzo_registry_collector", None)
        if collector is None:
            collector = _InstanceCollector()
            self._metrics.registry.register(collector)
            self._metrics._mezzo_registry_collector = collector  # type: ignore[attr-defined]
        collector.counts = counts

    def change(self, namespace: str, service: str, change: str) -> None:
        self._inc("change", namespace, service, change)

    def heartbeat(self, namespace: str, service: str, outcome: str) -> None:
        self._inc("heartbeat", namespace, service, outcome)

    def probe(self, namespace: str, service: str, passed: bool) -> None:
        self._inc("probe", namespace, service, "passed" if passed else "failed")

    def _inc(self, kind: str, namespace: str, service: str, value: str) -> None:
        if self._metrics is None:
            return
        key = (kind, namespace, service, value)
        child = self._children.get(key)
        if child is None:  # labels() hashes and locks on every call: look children up once
            child = self._children[key] = self._counters[kind].labels(namespace, service, value)
        child.inc()


class _InstanceCollector(Collector):
    def __init__(self) -> None:
        self.counts: Counts | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("mezzo_registry_registered_instances", "Registered instances by status.",
                                   labels=("namespace", "service", "status"))
        for namespace, service, status, count in (self.counts() if self.counts else ()):
            family.add_metric([namespace, service, status], count)
        yield family
