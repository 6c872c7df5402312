"""Prometheus metrics for one node, kept in a registry the node owns."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

__all__ = ["DEFAULT_BUCKETS", "Metrics", "metric_name"]

_SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
_OPENMETRICS_MEDIA_TYPE = "application/openmetrics-text"

DEFAULT_BUCKETS: tuple[float, ...] = Histogram.DEFAULT_BUCKETS

_M = TypeVar("_M", Counter, Gauge, Histogram)


def metric_name(service: str, what: str, unit: str) -> str:
    """The exposed family name `mezzo_<service>_<what>_<unit>`, validated."""
    for part_name, part in (("service", service), ("what", what), ("unit", unit)):
        if not _SNAKE_CASE.fullmatch(part):
            raise ValueError(f"metric {part_name} must be snake_case, got {part!r}")
    return f"mezzo_{service}_{what}_{unit}"


@dataclass(frozen=True)
class _Registered:
    kind: type[Counter | Gauge | Histogram]
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | None
    metric: Any


class Metrics:
    """Metric factory over a private CollectorRegistry; asking twice returns the same metric.

    Idempotence matters because a module restarted inside one process re-declares
    its metrics, and prometheus-client rejects a second registration of a name.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._by_name: dict[str, _Registered] = {}
        self._lock = threading.Lock()
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    def counter(
        self, service: str, what: str, unit: str, doc: str, labels: Sequence[str] = ()
    ) -> Counter:
        """A counter exposed as `mezzo_<service>_<what>_total` (unit "total")
        or `mezzo_<service>_<what>_<unit>_total` for any other unit."""
        name = metric_name(service, what, unit)
        # prometheus-client appends `_total` to counters itself.
        base = name.removesuffix("_total")
        return self._get_or_create(Counter, base, doc, labels, unit=_unit_of(unit))

    def gauge(
        self, service: str, what: str, unit: str, doc: str, labels: Sequence[str] = ()
    ) -> Gauge:
        """A gauge exposed as `mezzo_<service>_<what>_<unit>`."""
        name = _non_counter_name(service, what, unit)
        return self._get_or_create(Gauge, name, doc, labels, unit=unit)

    def histogram(
        self,
        service: str,
        what: str,
        unit: str,
        doc: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        """A histogram exposed as `mezzo_<service>_<what>_<unit>` (+ _bucket/_sum/_count)."""
        name = _non_counter_name(service, what, unit)
        return self._get_or_create(Histogram, name, doc, labels, unit=unit, buckets=tuple(buckets))

    def on_scrape(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Run ``refresh`` before each scrape: for gauges read from a backend over the network."""
        self._refreshers.append(refresh)

    async def refresh(self, timeout: float = 2.0) -> None:
        """Run the scrape hooks; one that fails or is slow leaves its last values, the scrape goes on."""
        for refresh in list(self._refreshers):
            try:
                await asyncio.wait_for(refresh(), timeout)
            except Exception:
                logging.getLogger("mezzo.telemetry").warning("metrics refresh failed", exc_info=True)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """Exposition body and its content type; OpenMetrics when `accept` asks for it."""
        if _wants_openmetrics(accept):
            return openmetrics.generate_latest(self.registry), openmetrics.CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4

    def _get_or_create(
        self,
        kind: type[_M],
        name: str,
        doc: str,
        labels: Sequence[str],
        *,
        unit: str,
        buckets: tuple[float, ...] | None = None,
    ) -> _M:
        label_names = tuple(labels)
        for label in label_names:
            if not _SNAKE_CASE.fullmatch(label):
                raise ValueError(f"label names must be snake_case, got {label!r}")
        with self._lock:
            known = self._by_name.get(name)
            if known is not None:
                if (known.kind, known.labels, known.buckets) != (kind, label_names, buckets):
                    raise ValueError(
                        f"metric {name} already registered as {known.kind.__name__}"
                        f"{list(known.labels)} with other type, labels or buckets"
                    )
                metric: _M = known.metric
                return metric
            extra: dict[str, Any] = {"buckets": buckets} if buckets is not None else {}
            metric = kind(
                name, doc, labelnames=label_names, unit=unit, registry=self.registry, **extra
            )
            self._by_name[name] = _Registered(kind, label_names, buckets, metric)
            return metric


def _unit_of(unit: str) -> str:
    # "total" is the counter suffix, not a unit: OpenMetrics must not list it as UNIT.
    return "" if unit == "total" else unit


def _non_counter_name(service: str, what: str, unit: str) -> str:
    if unit == "total":
        raise ValueError("the unit 'total' is reserved for counters")
    return metric_name(service, what, unit)


def _wants_openmetrics(accept: str | None) -> bool:
    for item in (accept or "").split(","):
        media_type, _, params = item.partition(";")
        if media_type.strip().lower() == _OPENMETRICS_MEDIA_TYPE and _quality(params) > 0:
            return True
    return False


def _quality(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0
