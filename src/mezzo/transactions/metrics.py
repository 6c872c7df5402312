"""Transaction metrics: outcomes by mode, branch latency, retries, and transactions stuck too long."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mezzo.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from mezzo.transactions.store import TxLog

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
MAX_CHILDREN = 1024  # label sets kept at hand, all metrics together (modes, ops and outcomes are few); then anew


class TxMetrics:
    def __init__(self, metrics: Metrics | None, log: TxLog, stuck_after: float) -> None:
        self.enabled = metrics is not None
        # labels -> child, per metric: ``labels()`` checks, converts and locks on every call
        self._children: dict[tuple[str, ...], Any] = {}
        if metrics is None:
            return
        self.outcomes = metrics.counter("tx", "transactions", "total",
                                        "Global transactions finished, by mode and outcome.",
                                        labels=("mode", "outcome"))
        self.latency = metrics.histogram("tx", "branch_duration", "seconds", "Branch call latency.",
                                         labels=("mode", "op", "outcome"), buckets=BUCKETS)
        self.retries = metrics.counter("tx", "retries", "total",
                                       "Rounds that ended with a branch to try again.", labels=("mode",))
        collector = getattr(metrics, "_mezzo_tx_collector", None)
        if collector is None:
            collector = _StuckCollector()
            metrics.registry.register(collector)
            metrics._mezzo_tx_collector = collector  # type: ignore[attr-defined]
            metrics.on_scrape(collector.refresh)
        collector.log, collector.stuck_after = log, stuck_after

    def finished(self, mode: str, outcome: str) -> None:
        if self.enabled:
            self._child(self.outcomes, "finished", mode, outcome).inc()

    def branch(self, mode: str, op: str, outcome: str, seconds: float) -> None:
        if self.enabled:
            self._child(self.latency, "branch", mode, op, outcome).observe(max(seconds, 0.0))

    def retry(self, mode: str) -> None:
        if self.enabled:
            self._child(self.retries, "retry", mode).inc()

    def _child(self, metric: Any, *key: str) -> Any:
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= MAX_CHILDREN:
                self._children.clear()
            child = self._children[key] = metric.labels(*key[1:])
        return child


class _StuckCollector(Collector):
    """Unfinished transactions older than the threshold, counted from the store at scrape time."""

    def __init__(self) -> None:
        self.log: TxLog | None = None
        self.stuck_after = 300.0
        self._counts: dict[str, int] = {}

    async def refresh(self) -> None:
        if self.log is None:
            return
        counts: dict[str, int] = {}
        cutoff = time.time() - self.stuck_after
        async for gid, _, _ in self.log.scan_active():
            loaded = await self.log.load(gid)
            if loaded is not None and loaded.tx.created < cutoff:
                counts[loaded.tx.mode.value] = counts.get(loaded.tx.mode.value, 0) + 1
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("mezzo_tx_stuck_transactions",
                                   "Unfinished transactions older than the stuck threshold.", labels=("mode",))
        for mode, count in self._counts.items():
            family.add_metric([mode], count)
        yield family
