"""Redis nodes behind a ketama ring: connections, failure detection, ejection, probes, replica takeover.

A node (a *shard*: one ring member) has a primary endpoint and optionally a replica. Every
operation reports its outcome: a timeout or connection error makes the shard *suspect*; after
``eject_after`` consecutive failures its replica, when it answers, is promoted (``REPLICAOF NO
ONE``) and takes the shard's traffic; without one the shard is *ejected* and its share of the
ring rehashes to the others. A failure is one event, not one call: a timeout or a broken
connection fails every call in flight at once, and counts once. The last member of a ring is
never ejected (its keys would have nowhere else to go). Failed endpoints are probed with ``PING``
at exponentially growing intervals; an ejected shard that answers again is readmitted once the
keys that other nodes wrote or deleted for it meanwhile are deleted from it (what it holds of
them is stale; the rest is still current), and a recovered old primary is made a replica of the
one that took over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis
import structlog
from redis.asyncio.connection import SSLConnection
from redis.backoff import NoBackoff
from redis.credentials import CredentialProvider
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from mezzo.cache.distributed.backend import (
    HealthPolicy,
    NodeAddress,
    NodeSettingError,
    NodeUnavailable,
)
from mezzo.cache.distributed.link import NodeLink
from mezzo.cache.distributed.ring import KetamaRing

log = structlog.get_logger("mezzo.cache")
State = Literal["healthy", "suspect", "ejected"]
NODE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
MAX_STALE_KEYS = 100_000  # keys remembered per ejected shard; past it, it is emptied on readmission
STALE_CHUNK = 500  # keys per deleting round trip at readmission


def connect(address: NodeAddress, policy: HealthPolicy) -> aioredis.Redis:
    """A client that fails fast (no retries of its own: failures must reach the detector) and
    returns raw replies (no response callbacks), so the proxy can forward them unchanged."""
    client = aioredis.Redis(host=address.host, port=address.port, db=address.db, socket_timeout=policy.timeout,
                            socket_connect_timeout=policy.timeout, retry=Retry(NoBackoff(), 0),
                            max_connections=policy.max_connections, protocol=2, **client_options(address))
    client.response_callbacks.clear()
    if address.tls is not None:
        client.connection_pool.connection_class = NodeSSLConnection
    return client


class NodeSSLConnection(SSLConnection):
    """redis-py builds a connection's TLS context once and keeps it across reconnects; a node's TLS
    files are read at each connect instead, as link.py does (a rotated CA or client certificate applies)."""

    def _connection_arguments(self) -> Any:
        self.ssl_context.context = None
        return super()._connection_arguments()


class EnvPassword(CredentialProvider):
    """AUTH credentials whose password is read from ``password_env`` at every new connection."""

    def __init__(self, address: NodeAddress) -> None:
        self.address = address

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        try:
            password = self.address.auth_password()
        except NodeSettingError as exc:  # a RedisError: redis-py closes the socket it opened
            raise RedisConnectionError(str(exc)) from None
        assert password is not None
        return (self.address.username, password) if self.address.username else (password,)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()


def client_options(address: NodeAddress) -> dict[str, Any]:
    """redis-py's options for a node's credentials and TLS (single-node and cluster clients alike)."""
    # a user name without a password sends no AUTH (as the data link): Redis has no AUTH by name alone
    options: dict[str, Any] = {"username": address.username if address.password is not None else None}
    if address.password_env is not None:
        options = {"credential_provider": EnvPassword(address)}
    elif address.password is not None:
        options["password"] = address.password
    tls = address.tls
    if tls is not None:
        options.update(ssl=True, ssl_ca_certs=tls.ca_certs, ssl_cert_reqs="required" if tls.verify else "none",
                       ssl_check_hostname=tls.verify, ssl_certfile=tls.certfile, ssl_keyfile=tls.keyfile)
    return options


async def _within(call: Awaitable[Any], seconds: float) -> Any:
    """``call`` with a deadline. Not ``asyncio.wait_for``: on Python 3.11 it drops a cancellation
    that comes as the call completes, and a probe loop that ignores cancellation never closes."""
    async with asyncio.timeout(seconds):
        return await call


@dataclass(eq=False)
class Endpoint:
    address: NodeAddress
    client: aioredis.Redis  # control: probes, promotion, SCAN and DUMP/RESTORE
    link: NodeLink  # data: proxied calls, pipelined on one connection
    failures: int = 0
    down_since: float | None = None
    last_error: BaseException | None = field(default=None, repr=False)  # counted already


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
    # While ejected: its keys other nodes wrote or deleted meanwhile; None when all it holds is stale.
    stale: set[bytes] | None = field(default_factory=set, repr=False)

    @property
    def active(self) -> Endpoint:
        return self.endpoints[0]

    def status(self) -> dict[str, Any]:
        error = self.active.last_error if self.state != "healthy" else None
        return {"name": self.name, "weight": self.weight, "state": self.state, "failures": self.failures,
                "primary": self.active.address.label,
                "replica": self.endpoints[1].address.label if len(self.endpoints) > 1 else None,
                "replicaUp": self.endpoints[1].down_since is None if len(self.endpoints) > 1 else None,
                "lastError": str(error) if error is not None else None}


RingChange = Callable[[KetamaRing, KetamaRing, str, str], None]  # (old, new, shard name, reason)


class NodePool:
    def __init__(self, shards: list[Shard], policy: HealthPolicy, on_ring_change: RingChange | None = None) -> None:
        self.policy = policy
        self.shards = {s.name: s for s in shards}
        self.on_ring_change = on_ring_change
        self.ring = self._build_ring()
        self.ejections = 0
        self.takeovers = 0
        self.ejected: set[Shard] = set()
        self._full_ring: KetamaRing | None = None  # the ring with the ejected shards, while there are any
        self._full_ring_of: dict[str, Shard] | None = None
        # Deletes stale keys from an endpoint about to be readmitted (the backend may do it its own way).
        self.delete_keys: Callable[[Endpoint, list[bytes]], Awaitable[None]] = self._delete_keys

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
        if exc is endpoint.last_error:
            return  # one break fails every call in flight: one failure, not one per call
        endpoint.last_error = exc
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
            if await self._ping(standby) and await self._promote(shard, standby):
                return
        if not any(s is not shard and s.state != "ejected" for s in self.shards.values()):
            failed.down_since = None  # still the shard's endpoint: calls keep failing until it answers
            if shard.failures == self.policy.eject_after:
                log.warning("cache node failing but not ejected: it is the last one on the ring", node=shard.name)
            return
        shard.state, shard.ejected_at, shard.stale = "ejected", time.monotonic(), set()
        self.ejected.add(shard)
        self._full_ring = None
        self.ejections += 1
        self._ring_changed(shard, "ejected")
        await self._probe_until_back(shard)

    async def _promote(self, shard: Shard, standby: Endpoint) -> bool:
        """Make ``standby`` the shard's primary, once it has stopped following the failed one
        (a replica still following would refuse every write)."""
        try:
            await _within(standby.client.execute_command("REPLICAOF", "NO", "ONE"), self.policy.timeout)
        except Exception as exc:
            log.warning("cache replica could not take over", node=shard.name, replica=standby.address.label,
                        error=str(exc))
            return False
        old = shard.active
        shard.endpoints.remove(standby)
        shard.endpoints.insert(0, standby)
        standby.down_since = None
        shard.state, shard.failures = "healthy", 0
        self.takeovers += 1
        log.warning("cache replica took over", node=shard.name, new_primary=standby.address.label,
                    old_primary=old.address.label)
        if shard.standby_probe is not None:
            shard.standby_probe.cancel()  # it waited for an endpoint that is the primary now
        shard.standby_probe = asyncio.create_task(self._rejoin_as_replica(shard, old),
                                                  name=f"mezzo-cache-rejoin-{shard.name}")
        return True

    async def _rejoin_as_replica(self, shard: Shard, old: Endpoint) -> None:
        """Wait for the old primary to answer, then make it follow the endpoint that took over."""
        delay = self.policy.probe_interval
        while True:
            await self._wait_up(old)
            primary = shard.active.address
            try:
                await _within(old.client.execute_command("REPLICAOF", primary.host, str(primary.port)),
                                       self.policy.timeout)
            except Exception as exc:
                log.warning("cache node could not rejoin as replica", node=shard.name, endpoint=old.address.label,
                            error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.policy.probe_max_interval)
                continue
            log.info("cache node rejoined as replica", node=shard.name, endpoint=old.address.label)
            return

    async def _probe_until_back(self, shard: Shard) -> None:
        """Readmit the shard once an endpoint answers, can take writes, and holds no stale keys."""
        delay = self.policy.probe_interval
        while True:
            endpoint = await self._first_up(shard.endpoints)
            try:
                if endpoint is not shard.active:  # its replica came back first: it must take writes
                    await _within(endpoint.client.execute_command("REPLICAOF", "NO", "ONE"),
                                           self.policy.timeout)
                await self._forget_stale(shard, endpoint)
                break
            except Exception as exc:
                log.warning("cache node answers but is not readmitted yet", node=shard.name,
                            endpoint=endpoint.address.label, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.policy.probe_max_interval)
        if endpoint is not shard.active:
            shard.endpoints.remove(endpoint)
            shard.endpoints.insert(0, endpoint)
        endpoint.down_since = None
        shard.state, shard.failures, shard.ejected_at, shard.stale = "healthy", 0, None, set()
        for ep in shard.endpoints:
            ep.failures = 0
        self.ejected.discard(shard)
        self._full_ring = None
        self._ring_changed(shard, "readmitted")

    async def _forget_stale(self, shard: Shard, endpoint: Endpoint) -> None:
        """Delete what other nodes wrote or deleted for this shard while it was out (raises when
        the node fails): the rest of what it holds nobody changed, so it is still current.
        Without a record (too many keys, or a client's FLUSHDB) it is emptied instead."""
        while True:
            if shard.stale is None:
                await _within(endpoint.client.execute_command("FLUSHDB"), self.policy.timeout * 4)
                shard.stale = set()
            if not shard.stale:
                return  # nothing awaited since the check: no key is recorded between it and the readmission
            chunk = [shard.stale.pop() for _ in range(min(STALE_CHUNK, len(shard.stale)))]
            try:
                await self.delete_keys(endpoint, chunk)
            except BaseException:
                if shard.stale is not None:
                    shard.stale.update(chunk)  # still stale: deleted on the next try
                raise

    async def _delete_keys(self, endpoint: Endpoint, keys: list[bytes]) -> None:
        await _within(endpoint.client.execute_command("DEL", *keys), self.policy.timeout * 4)

    def note_written_elsewhere(self, keys: Iterable[bytes]) -> None:
        """While shards are ejected: remember which of their keys other nodes wrote or deleted."""
        ring = self._full_ring
        if ring is None or self._full_ring_of is not self.shards:  # the node list was replaced
            ring = self._full_ring = KetamaRing((s.name, s.weight) for s in self.shards.values())
            self._full_ring_of = self.shards
        for key in keys:
            shard = self.shards.get(ring.node_for(key))
            if shard is None or shard.state != "ejected" or shard.stale is None:
                continue
            shard.stale.add(key)
            if len(shard.stale) > MAX_STALE_KEYS:
                log.warning("cache node out too long to track its keys: it is emptied on readmission",
                            node=shard.name)
                shard.stale = None

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
            await _within(endpoint.client.execute_command("PING"), self.policy.timeout)
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
        while task is not None and not task.done():
            # Again until it ends: a client library's own wait_for may drop a cancellation (see _within).
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        if task is not None and not task.cancelled():
            task.exception()  # retrieved: closing, its outcome no longer matters
    for endpoint in shard.endpoints:
        endpoint.link.close()
        with contextlib.suppress(Exception):
            await endpoint.client.aclose()


__all__ = ["NODE_ERRORS", "Endpoint", "HealthPolicy", "NodeAddress", "NodePool", "NodeSSLConnection", "NodeUnavailable",
           "Shard", "client_options", "close_shard", "connect"]
