"""What the cache reports about itself: per-namespace statistics, hot and big keys, as JSON and Prometheus.

Everything is read from the engine's plain counters when asked (an API call or a scrape);
nothing here runs per operation.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mezzo.cache.engine import Engine, Keyspace
from mezzo.telemetry.metrics import Metrics

SCRAPE_TOP = 10  # hot and big keys per namespace in /metrics: bounded label cardinality
PROBE_KEYS = 1000  # keys measured at report time, to find big keys no sampled op touched


def stats(ks: Keyspace) -> dict[str, Any]:
    lookups = ks.hits + ks.misses
    now = time.monotonic()
    ks.sampler.tick(now, ks.ops)
    return {"namespace": ks.name, "keys": len(ks.data), "memoryBytes": ks.memory, "maxMemoryBytes": ks.max_memory,
            "policy": ks.policy, "hits": ks.hits, "misses": ks.misses,
            "hitRatio": ks.hits / lookups if lookups else None, "evictions": ks.evictions, "expired": ks.expired,
            "ops": ks.ops, "opsPerSecond": ks.sampler.ops_per_second(now, ks.ops), "tags": len(ks.tags)}


def hot_keys(ks: Keyspace, limit: int) -> list[dict[str, Any]]:
    return [hot.as_json() for hot in ks.sampler.hot_keys(limit)]


def big_keys(ks: Keyspace, limit: int, probe: int = PROBE_KEYS) -> list[dict[str, Any]]:
    """The largest keys among those sampled by operations plus ``probe`` random keys, measured now."""
    big = ks.sampler.big
    if ks.data and probe:
        keys = list(ks.data)
        for key in random.sample(keys, min(probe, len(keys))):
            size = ks.size_of(key)
            if size is not None:
                big.offer(key, size)
    found = []
    for key in list(big.sizes):
        size = ks.size_of(key)
        if size is None:
            big.forget(key)
        else:
            big.sizes[key] = size
            found.append((size, key))
    found.sort(reverse=True)
    return [{"key": key.decode("utf-8", "replace"), "bytes": size,
             "type": "string" if isinstance(ks.data[key], bytes) else "hash"} for size, key in found[:limit]]


def report(ks: Keyspace, limit: int) -> dict[str, Any]:
    return {"namespace": ks.name, "sampleEvery": ks.sampler.every, "sampledOps": ks.sampler.hot.seen,
            "hot": hot_keys(ks, limit), "big": big_keys(ks, limit)}


class CacheCollector:
    """Prometheus families read from the engine at scrape time (beyond keys/memory/hits/misses/evictions)."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def collect(self) -> Iterator[Any]:
        ops = CounterMetricFamily("mezzo_cache_ops", "Reads and writes.", labels=["namespace"])
        expired = CounterMetricFamily("mezzo_cache_expired_keys", "Keys removed because their TTL ran out.",
                                      labels=["namespace"])
        ratio = GaugeMetricFamily("mezzo_cache_hit_ratio", "Hits over lookups since start.", labels=["namespace"])
        rate = GaugeMetricFamily("mezzo_cache_ops_per_second", "Operations a second over the last 10 s.",
                                 labels=["namespace"])
        hot = GaugeMetricFamily("mezzo_cache_hot_key_ops", "Estimated operations on the hottest keys (sampled, "
                                "decaying).", labels=["namespace", "key"])
        big = GaugeMetricFamily("mezzo_cache_big_key_bytes", "The largest keys found by sampling.",
                                labels=["namespace", "key"])
        now = time.monotonic()
        for ks in list(self.engine.spaces.values()) if self.engine is not None else []:
            name = [ks.name]
            ops.add_metric(name, ks.ops)
            expired.add_metric(name, ks.expired)
            lookups = ks.hits + ks.misses
            if lookups:
                ratio.add_metric(name, ks.hits / lookups)
            per_second = ks.sampler.ops_per_second(now, ks.ops)
            if per_second is not None:
                rate.add_metric(name, per_second)
            for item in ks.sampler.hot_keys(SCRAPE_TOP):
                hot.add_metric([ks.name, item.key.decode("utf-8", "replace")], item.count)
            for entry in big_keys(ks, SCRAPE_TOP, probe=0):
                big.add_metric([ks.name, entry["key"]], entry["bytes"])
        yield from (ops, expired, ratio, rate, hot, big)


def register_metrics(metrics: Metrics, engine: Engine) -> None:
    """Expose ``engine``'s statistics on ``metrics`` (once per registry; a restarted module re-points it)."""
    collector = getattr(metrics, "_mezzo_cache_stats_collector", None)
    if collector is None:
        collector = CacheCollector()
        metrics.registry.register(collector)
        metrics._mezzo_cache_stats_collector = collector  # type: ignore[attr-defined]
    collector.engine = engine
