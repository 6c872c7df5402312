"""RED metrics (rate, errors, duration) per service and operation, from the spans as they arrive
(Prometheus) and from the store over any window (API); latency percentiles per dependency edge.

Only entry spans count for RED: server and consumer spans, and root spans of any kind, so a
request is counted once per service it enters, not once per internal step.
"""

from __future__ import annotations

import math
from typing import Any

from mezzo.tracing.model import STATUS_ERROR, Span

ENTRY_KINDS = (2, 5)  # server, consumer
MAX_OPERATIONS = 500  # per service in Prometheus labels; beyond it operations are labelled "other"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def is_entry(span: Span) -> bool:
    return span.kind in ENTRY_KINDS or not span.parent_id


class RedMetrics:
    """Counts every entry span into Prometheus: calls, errors and a latency histogram."""

    def __init__(self, metrics: Any) -> None:
        labels = ("service", "operation")
        self.calls = metrics.counter("tracing", "calls", "total", "Entry spans (requests) per service and operation.",
                                     labels=labels)
        self.errors = metrics.counter("tracing", "errors", "total", "Entry spans with error status.", labels=labels)
        self.latency = metrics.histogram("tracing", "latency", "seconds", "Duration of entry spans.", labels=labels,
                                         buckets=BUCKETS)
        self._ops: dict[str, set[str]] = {}
        self._children: dict[tuple[str, str, str], Any] = {}

    def observe(self, spans: list[Span]) -> None:
        """Counts go in once per (service, operation) of the request, durations one by one."""
        groups: dict[tuple[str, str], list[Span]] = {}
        for span in spans:
            if span.kind in ENTRY_KINDS or not span.parent_id:
                groups.setdefault((span.service, span.name), []).append(span)
        for (service, name), entries in groups.items():
            known = self._ops.setdefault(service, set())
            op = name
            if op not in known:
                if len(known) >= MAX_OPERATIONS:
                    op = "other"
                else:
                    known.add(op)
            self._child("c", service, op).inc(len(entries))
            errors = sum(1 for span in entries if span.status == STATUS_ERROR)
            if errors:
                self._child("e", service, op).inc(errors)
            observe = self._child("l", service, op).observe
            for span in entries:
                observe(span.duration_us / 1e6)

    def _child(self, which: str, service: str, op: str) -> Any:
        key = (which, service, op)
        child = self._children.get(key)
        if child is None:
            family = {"c": self.calls, "e": self.errors, "l": self.latency}[which]
            child = self._children[key] = family.labels(service, op)
        return child


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list (``q`` in 0..100)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def red_summary(rows: list[tuple[str, str, int, int]], seconds: float) -> list[dict[str, Any]]:
    """Rows of (service, operation, duration_us, status) to RED per service and operation."""
    groups: dict[tuple[str, str], tuple[list[int], int]] = {}
    for service, op, duration, status in rows:
        durations, errors = groups.get((service, op), ([], 0))
        durations.append(duration)
        groups[(service, op)] = (durations, errors + (status == STATUS_ERROR))
    out = []
    for (service, op), (durations, errors) in sorted(groups.items()):
        durations.sort()
        out.append({"service": service, "operation": op, "calls": len(durations),
                    "rate": len(durations) / seconds if seconds > 0 else 0.0,
                    "errorRatio": errors / len(durations), "p50Us": percentile(durations, 50),
                    "p95Us": percentile(durations, 95), "p99Us": percentile(durations, 99)})
    return out
