"""Applied Cache resources made live: engine limits for embedded namespaces, backends for distributed ones."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from mezzo.cache.distributed.backend import DistributedBackend
from mezzo.cache.engine import Engine
from mezzo.cache.model import CacheSpec
from mezzo.cache.proxy import ProxyServer

log = structlog.get_logger("mezzo.cache")
RETIRE_AFTER = 5.0  # seconds a replaced backend stays open for calls in flight


@dataclass(slots=True)
class Declared:
    spec: CacheSpec
    created: datetime


def shard_configs(spec: CacheSpec) -> list[Any]:
    from mezzo.cache.distributed.sharded import ShardConfig

    if spec.backend == "redis":
        (address,) = spec.seeds()
        return [ShardConfig(address.label, 1, address)]
    return [ShardConfig(n.ring_name, n.weight, *n.addresses()) for n in spec.nodes]


class CacheNamespaces:
    def __init__(self, engine: Engine, server: ProxyServer) -> None:
        self.engine = engine
        self.server = server
        self.router = server.router
        self.declared: dict[str, Declared] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def spec(self, namespace: str) -> CacheSpec | None:
        found = self.declared.get(namespace)
        return found.spec if found else None

    def backend(self, namespace: str) -> DistributedBackend | None:
        return self.router.backends.get(namespace)

    async def apply(self, namespace: str, spec: CacheSpec, created: datetime) -> None:
        self.declared[namespace] = Declared(spec, created)
        if spec.distributed:
            await self._distribute(namespace, spec)
        else:
            await self._drop_backend(namespace)
            ks = self.engine.space(namespace)
            ks.max_memory = spec.max_memory
            ks.policy = spec.eviction
            ks.default_ttl_ms = int(spec.default_ttl * 1000) if spec.default_ttl else None
            ks.enforce()
        ttl = int(spec.default_ttl * 1000) if spec.default_ttl and spec.distributed else None
        defaults = {k: v for k, v in self.router.default_ttl_ms.items() if k != namespace}
        if ttl:
            defaults[namespace] = ttl
        self.router.default_ttl_ms = defaults
        self._map_databases()
        log.info("cache namespace applied", namespace=namespace, backend=spec.backend)

    async def remove(self, namespace: str) -> None:
        gone = self.declared.pop(namespace, None)
        await self._drop_backend(namespace)
        self.router.default_ttl_ms = {k: v for k, v in self.router.default_ttl_ms.items() if k != namespace}
        if gone is not None and not gone.spec.distributed and namespace in self.engine.spaces:
            ks = self.engine.spaces[namespace]
            ks.max_memory, ks.policy, ks.default_ttl_ms = None, "lru", None
        self._map_databases()

    async def _distribute(self, namespace: str, spec: CacheSpec) -> None:
        policy = spec.failure_detection.policy()
        # imported here: redis-py is an extra, needed only once a namespace is distributed
        from mezzo.cache.distributed.cluster import ClusterBackend
        from mezzo.cache.distributed.memcached import MemcachedBackend
        from mezzo.cache.distributed.sharded import ShardedBackend

        current = self.router.backends.get(namespace)
        if (isinstance(current, ShardedBackend) and current.kind == spec.backend
                and current.protocol == spec.protocol):
            await current.reconfigure(shard_configs(spec), policy)
            return
        backend: DistributedBackend
        if spec.backend == "redis-cluster":
            backend = ClusterBackend(spec.seeds(), policy)
        elif spec.protocol == "memcached":
            backend = MemcachedBackend(shard_configs(spec), policy, kind=spec.backend)
        else:
            backend = ShardedBackend(shard_configs(spec), policy, kind=spec.backend)
        self.router.backends = {**self.router.backends, namespace: backend}
        if current is not None:
            self._retire(current)

    async def _drop_backend(self, namespace: str) -> None:
        current = self.router.backends.get(namespace)
        if current is not None:
            self.router.backends = {k: v for k, v in self.router.backends.items() if k != namespace}
            self._retire(current)

    def _retire(self, backend: DistributedBackend) -> None:
        """Close a replaced backend once calls already sent to it had time to finish."""
        async def later() -> None:
            try:
                await asyncio.sleep(RETIRE_AFTER)
            finally:
                await backend.close()

        task = asyncio.create_task(later(), name="mezzo-cache-retire-backend")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _map_databases(self) -> None:
        """``spec.database`` binds a SELECT index; when two resources ask for one, the older keeps it."""
        by_db: dict[int, str] = {}
        for namespace, declared in sorted(self.declared.items(), key=lambda item: item[1].created):
            db = declared.spec.database
            if db is None:
                continue
            if db in by_db:
                log.warning("cache database index taken", database=db, namespace=namespace, holder=by_db[db])
                continue
            by_db[db] = namespace
        if by_db != self.router.by_db:
            self.router.by_db = by_db
            self.server.remap()

    def status(self, namespace: str) -> dict[str, Any] | None:
        declared = self.declared.get(namespace)
        backend = self.router.backends.get(namespace)
        if backend is not None:
            return {"namespace": namespace, **backend.status()}
        if declared is not None or namespace in self.engine.spaces:
            return {"namespace": namespace, "backend": "embedded", "nodes": [], "rebalance": None}
        return None

    async def close(self) -> None:
        for namespace in list(self.router.backends):
            await self._drop_backend(namespace)
        for task in list(self._retiring):
            task.cancel()  # closes its backend now
        await asyncio.gather(*self._retiring, return_exceptions=True)
