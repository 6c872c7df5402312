"""Redis nodes behind a ketama ring: connections, failure detection, ejection, probes, replica takeover.

A node (a *shard*: one ring member) has a primary endpoint and optionally a replica. Every
operation reports its outcome: a timeout or connection error makes the shard *suspect*; after
``eject_after`` consecutive failures its replica, when it answers, is promoted (``REPLICAOF NO
ONE``) and takes the shard's traffic; without one the shard is *ejected* and its share of the
ring rehashes to the others. Failed endpoints are probed with ``PING`` at exponentially growing
intervals; an ejected shard that answers again is readmitted (emptied first: while it was out,
its keys were written elsewhere, so whatever it still holds may be stale), and a recovered old
primary is made a replica of the one that took over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis
import structlog
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from mezzo.cache.distributed.backend import HealthPolicy, NodeAddress, NodeUnavailable
from mezzo.cache.distributed.link import NodeLink
from mezzo.cache.distributed.ring import KetamaRing

log = structlog.get_logger("mezzo.cache")
State = Literal["healthy", "suspect", "ejected"]
NODE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


def connect(address: NodeAddress, policy: HealthPolicy) -> aioredis.Redis:
    """A client that fails fast (no retries of its own: failures must reach the detector) and
    returns raw replies (no response callbacks), so the proxy can forward them unchanged."""
    client = aioredis.Redis(host=address.host, port=address.port, db=address.db, password=address.password,
                            username=address.username, socket_timeout=policy.timeout,
                            socket_connect_timeout=policy.timeout, retry=Retry(NoBackoff(), 0),
                            max_connections=policy.max_connections, protocol=2)
    client.response_callbacks.clear()
    return client


@dataclass(eq=False)
class Endpoint:
    address: NodeAddress
    client: aioredis.Redis  # control: probes, promotion, SCAN and DUMP/RESTORE
    link: NodeLink  # data: proxied calls, pipelined on one connection
    failures: int = 0
    down_since: float | None = None


@dataclass(eq=False)
class Shard:
    """One ring member: its name on the ring, weight, and endpoints (the active one first)."""

    name: str
    weight: int
    endpoints: list[Endpoint]
    state: State = "healthy"
    failures: int = 0
    ejected_at: float | None = None
    probe: asyncio.Task[None] | None = field(default=None, repr=False)
    standby_probe: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def active(self) -> Endpoint:
        return self.endpoints[0]

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "state": self.state, "failures": self.failures,
                "primary": self.active.address.label,
                "replica": self.endpoints[1].address.label if len(self.endpoints) > 1 else None,
                "replicaUp": self.endpoints[1].down_since is None if len(self.endpoints) > 1 else None}


RingChange = Callable[[KetamaRing, KetamaRing, str, str], None]  # (old, new, shard name, reason)


class NodePool:
    def __init__(self, shards: list[Shard], policy: HealthPolicy, on_ring_change: RingChange | None = None) -> None:
        self.policy = policy
        self.shards = {s.name: s for s in shards}
        self.on_ring_change = on_ring_change
        self.ring = self._build_ring()
        self.ejections = 0
        self.takeovers = 0

    def _build_ring(self) -> KetamaRing:
        return KetamaRing((s.name, s.weight) for s in self.shards.values() if s.state != "ejected")

    def _ring_changed(self, shard: Shard, reason: str) -> None:
        old, self.ring = self.ring, self._build_ring()
        log.warning("cache ring changed", node=shard.name, reason=reason, members=len(self.ring))
        if self.on_ring_change is not None:
            self.on_ring_change(old, self.ring, shard.name, reason)

    def shard_for(self, key: bytes) -> Shard:
        return self.shards[self.ring.node_for(key)]

    # outcomes ----------------------------------------------------------------------------------

    def succeeded(self, shard: Shard) -> None:
        if shard.failures:
            shard.failures = 0
            shard.active.failures = 0
            if shard.state == "suspect":
                shard.state = "healthy"

    def failed(self, shard: Shard, endpoint: Endpoint, exc: BaseException) -> None:
        if endpoint is not shard.active or shard.state == "ejected":
            return  # a late failure of an endpoint that was already replaced
        shard.failures += 1
        endpoint.failures += 1
        if shard.state == "healthy":
            shard.state = "suspect"
            log.warning("cache node suspect", node=shard.name, endpoint=endpoint.address.label, error=str(exc))
        if shard.failures >= self.policy.eject_after and (shard.probe is None or shard.probe.done()):
            shard.probe = asyncio.create_task(self._fail_over(shard), name=f"mezzo-cache-failover-{shard.name}")

    # failover, ejection, probes -----------------------------------------------------------------

    async def _fail_over(self, shard: Shard) -> None:
        failed = shard.active
        failed.down_since = failed.down_since or time.monotonic()
        for standby in shard.endpoints[1:]:
            if await self._ping(standby):
                await self._promote(shard, standby)
                return
        shard.state, shard.ejected_at = "ejected", time.monotonic()
        self.ejections += 1
        self._ring_changed(shard, "ejected")
        await self._probe_until_back(shard)

    async def _promote(self, shard: Shard, standby: Endpoint) -> None:
        with contextlib.suppress(*NODE_ERRORS, Exception):
            await asyncio.wait_for(standby.client.execute_command("REPLICAOF", "NO", "ONE"), self.policy.timeout)
        old = shard.active
        shard.endpoints.remove(standby)
        shard.endpoints.insert(0, standby)
        standby.down_since = None
        shard.state, shard.failures = "healthy", 0
        self.takeovers += 1
        log.warning("cache replica took over", node=shard.name, new_primary=standby.address.label,
                    old_primary=old.address.label)
        shard.standby_probe = asyncio.create_task(self._rejoin_as_replica(shard, old),
                                                  name=f"mezzo-cache-rejoin-{shard.name}")

    async def _rejoin_as_replica(self, shard: Shard, old: Endpoint) -> None:
        """Wait for the old primary to answer, then make it follow the endpoint that took over."""
        await self._wait_up(old)
        primary = shard.active.address
        with contextlib.suppress(*NODE_ERRORS, Exception):
            await asyncio.wait_for(old.client.execute_command("REPLICAOF", primary.host, str(primary.port)),
                                   self.policy.timeout)
        log.info("cache node rejoined as replica", node=shard.name, endpoint=old.address.label)

    async def _probe_until_back(self, shard: Shard) -> None:
        endpoint = await self._first_up(shard.endpoints)
        if endpoint is not shard.active:
            shard.endpoints.remove(endpoint)
            shard.endpoints.insert(0, endpoint)
        # Keys of this shard were written to other nodes while it was out: what it holds may be stale.
        with contextlib.suppress(*NODE_ERRORS, Exception):
            await asyncio.wait_for(endpoint.client.execute_command("FLUSHDB"), self.policy.timeout * 4)
        endpoint.down_since = None
        shard.state, shard.failures, shard.ejected_at = "healthy", 0, None
        for ep in shard.endpoints:
            ep.failures = 0
        self._ring_changed(shard, "readmitted")

    async def _first_up(self, endpoints: list[Endpoint]) -> Endpoint:
        delay = self.policy.probe_interval
        while True:
            for endpoint in list(endpoints):
                if await self._ping(endpoint):
                    return endpoint
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.policy.probe_max_interval)

    async def _wait_up(self, endpoint: Endpoint) -> None:
        await self._first_up([endpoint])
        endpoint.down_since = None

    async def _ping(self, endpoint: Endpoint) -> bool:
        try:
            await asyncio.wait_for(endpoint.client.execute_command("PING"), self.policy.timeout)
            return True
        except Exception:
            return False

    # lifecycle -------------------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        return [s.status() for s in self.shards.values()]

    async def close(self) -> None:
        for shard in self.shards.values():
            await close_shard(shard)


async def close_shard(shard: Shard) -> None:
    for task in (shard.probe, shard.standby_probe):
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    for endpoint in shard.endpoints:
        endpoint.link.close()
        with contextlib.suppress(Exception):
            await endpoint.client.aclose()


__all__ = ["NODE_ERRORS", "Endpoint", "HealthPolicy", "NodeAddress", "NodePool", "NodeUnavailable", "Shard",
           "close_shard", "connect"]
