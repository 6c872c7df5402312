"""A cache over independent Redis nodes (or one Redis URL): ketama routing, per-node pipelines,
failure handling through the node pool, and reads that fall back to the old owner mid-rebalance."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import structlog
from redis.exceptions import ResponseError

from mezzo.cache.distributed.backend import Call, HealthPolicy, NodeAddress, NodeUnavailable
from mezzo.cache.distributed.link import NodeLink
from mezzo.cache.distributed.migrate import Migration, migrate, move_key
from mezzo.cache.distributed.pool import (
    NODE_ERRORS,
    Endpoint,
    NodePool,
    Shard,
    close_shard,
    connect,
)
from mezzo.cache.distributed.ring import KetamaRing

log = structlog.get_logger("mezzo.cache")


@dataclass(frozen=True, slots=True)
class ShardConfig:
    name: str
    weight: int
    primary: NodeAddress
    replica: NodeAddress | None = None


class ShardedBackend:
    protocol = "redis"

    def __init__(self, configs: list[ShardConfig], policy: HealthPolicy, kind: str = "nodes") -> None:
        self.kind = kind
        self.policy = policy
        self.configs = {c.name: c for c in configs}
        self.pool = NodePool([self.make_shard(c, policy) for c in configs], policy, self._ring_changed)
        self.pool.delete_keys = self._delete_stale
        self.retiring: dict[str, Shard] = {}  # removed from the ring, drained by the migration
        self.migration: Migration | None = None
        self.last_migration: Migration | None = None

    # configuration ----------------------------------------------------------------------------------

    def make_shard(self, config: ShardConfig, policy: HealthPolicy) -> Shard:
        addresses = [config.primary] + ([config.replica] if config.replica else [])
        return Shard(config.name, config.weight,
                     [Endpoint(a, self.control(a, policy), self.new_link(a, policy)) for a in addresses])

    def control(self, address: NodeAddress, policy: HealthPolicy) -> Any:
        """The client for a node's control work (probes, and for Redis SCAN, DUMP/RESTORE, promotion)."""
        return connect(address, policy)

    def new_link(self, address: NodeAddress, policy: HealthPolicy) -> NodeLink:
        """The pipelined connection proxied calls take."""
        return NodeLink(address, policy.timeout)

    def refuses(self, command: bytes) -> str | None:
        return None  # a Redis node serves every command the proxy plans

    async def reconfigure(self, configs: list[ShardConfig], policy: HealthPolicy) -> None:
        """Apply a new node list live: unchanged nodes keep their connections and health."""
        keep = {n for n, c in configs_by_name(configs).items() if self.configs.get(n) == c}
        if policy != self.policy:
            self.policy = self.pool.policy = policy
            for name in keep:  # same nodes, new timeouts: new clients, the old ones closed later
                for endpoint in self.pool.shards[name].endpoints:
                    endpoint.link.timeout = policy.timeout
                    old_client, endpoint.client = endpoint.client, self.control(endpoint.address, policy)
                    asyncio.get_running_loop().call_later(policy.timeout * 4 + 1, _close_soon, old_client)
        old_ring, old_shards = self.pool.ring, self.pool.shards
        shards: dict[str, Shard] = {}
        for config in configs:
            existing = self.pool.shards.get(config.name)
            shards[config.name] = existing if existing is not None and config.name in keep \
                else self.make_shard(config, policy)
        for name, shard in self.pool.shards.items():
            if shards.get(name) is not shard:  # keyed apart: a node may come back under its old name
                self.retiring[f"{name} (retiring {id(shard):x})"] = shard
        self.pool.shards = shards
        self.pool.ejected = {s for s in self.pool.ejected if shards.get(s.name) is s}
        self.configs = configs_by_name(configs)
        self.pool.ring = self.pool._build_ring()
        if old_ring.weights != self.pool.ring.weights or self.retiring:
            self._start_migration(old_ring, self.pool.ring, "reconfigured", old_shards)

    def _ring_changed(self, old: KetamaRing, new: KetamaRing, shard: str, reason: str) -> None:
        if reason == "ejected":
            return  # the node is gone: nothing to move from it, its share rehashes to the others
        self._start_migration(old, new, reason)

    def _start_migration(self, old: KetamaRing, new: KetamaRing, reason: str,
                         sources: dict[str, Shard] | None = None) -> None:
        sources = dict(sources if sources is not None else self.pool.shards)
        if self.migration is not None:  # not finished: keys may still sit where its old ring put them
            if self.migration.task is not None:
                self.migration.task.cancel()
            old, sources = self.migration.old, {**sources, **self.migration.sources}
        migration = Migration(old, new, reason, sources)
        migration.task = asyncio.create_task(self._migrate(migration), name="mezzo-cache-rebalance")
        self.migration = migration

    async def _migrate(self, migration: Migration) -> None:
        await migrate(migration, self._all_shards)
        self.last_migration = migration
        if self.migration is migration:
            self.migration = None
            retiring, self.retiring = self.retiring, {}
            for shard in retiring.values():
                await close_shard(shard)

    def _all_shards(self) -> dict[str, Shard]:
        return {**self.retiring, **self.pool.shards}

    async def rebalance(self) -> dict[str, Any]:
        ring = self.pool.ring
        self._start_migration(ring, ring, "requested")
        assert self.migration is not None
        return self.migration.status()

    # data path ------------------------------------------------------------------------------------------

    def _old_owner(self, key: bytes, owner: Shard) -> Shard | None:
        """During a migration: the shard that owned ``key`` before, when it differs and still answers."""
        migration = self.migration
        if migration is None or not len(migration.old):
            return None
        old = migration.sources.get(migration.old.node_for(key))  # by identity: a name can move address
        if old is None or old is owner or old.state == "ejected" or old.active.address == owner.active.address:
            return None
        return old

    async def run(self, calls: list[Call]) -> list[Any]:
        if not len(self.pool.ring):
            return [NodeUnavailable("no cache node is available") for _ in calls]
        owners = [self.pool.shard_for(c.key) for c in calls]
        if self.pool.ejected:  # what is changed elsewhere now is stale on the ejected node when it returns
            self.pool.note_written_elsewhere(c.key for c in calls if c.access != "read")
        fallbacks: dict[int, Shard] = {}
        extra: dict[int, Shard] = {}
        if self.migration is not None:
            for i, (call, owner) in enumerate(zip(calls, owners, strict=True)):
                old = self._old_owner(call.key, owner)
                if old is None:
                    continue
                if call.access == "read":
                    fallbacks[i] = old
                elif call.access == "delete":
                    extra[i] = old
                else:
                    try:
                        await move_key(call.key, old, owner)
                    except (*NODE_ERRORS, ResponseError) as exc:  # the migration moves it later: the call runs
                        log.warning("cache key not moved before a write", key=call.key[:64], error=str(exc))
        replies = await self._send(list(zip(owners, calls, strict=True)))
        if extra:  # deleted at both owners: a key not moved yet answers from the old one (GETDEL, DEL's count)
            second = await self._send([(shard, calls[i]) for i, shard in extra.items()])
            for i, reply in zip(extra, second, strict=True):
                if replies[i] in (None, 0) and not isinstance(reply, Exception):
                    replies[i] = reply
        if fallbacks:
            retry = [(i, shard) for i, shard in fallbacks.items() if replies[i] is None]
            if retry:
                second = await self._send([(shard, calls[i]) for i, shard in retry])
                for (i, _), reply in zip(retry, second, strict=True):
                    if not isinstance(reply, Exception):
                        replies[i] = reply
                # Missing at the old owner too: the migration may have moved it in between (it
                # restores at the new owner before deleting at the old), so ask the new one again.
                again = [i for i, _ in retry if replies[i] is None]
                if again:
                    third = await self._send([(owners[i], calls[i]) for i in again])
                    for i, reply in zip(again, third, strict=True):
                        replies[i] = reply
        return replies

    async def _send(self, routed: list[tuple[Shard, Call]]) -> list[Any]:
        groups: dict[int, tuple[Shard, list[int]]] = {}
        for index, (shard, _) in enumerate(routed):
            groups.setdefault(id(shard), (shard, []))[1].append(index)
        if len(groups) == 1:  # the common case of a single command: no gather
            (shard, _), = groups.values()
            return await self._on_shard(shard, [call.args for _, call in routed])
        replies: list[Any] = [None] * len(routed)
        results = await asyncio.gather(*(self._on_shard(shard, [routed[i][1].args for i in indexes])
                                         for shard, indexes in groups.values()))
        for (_, indexes), result in zip(groups.values(), results, strict=True):
            for i, reply in zip(indexes, result, strict=True):
                replies[i] = reply
        return replies

    async def _on_shard(self, shard: Shard, commands: list[tuple[bytes, ...]]) -> list[Any]:
        endpoint = shard.active
        try:
            result = await self.exchange(endpoint.link, commands)
        except NODE_ERRORS as exc:
            if self.pool.shards.get(shard.name) is shard:  # not a node already removed from the list
                self.pool.failed(shard, endpoint, exc)
            return [NodeUnavailable(f"cache node {shard.name} is unavailable ({exc})")] * len(commands)
        self.pool.succeeded(shard)
        return result

    async def exchange(self, link: NodeLink, commands: list[tuple[bytes, ...]]) -> list[Any]:
        """The replies of ``commands`` from one node (raises one of NODE_ERRORS when it fails)."""
        return await link.call(commands)

    async def _delete_stale(self, endpoint: Endpoint, keys: list[bytes]) -> None:
        """Delete ``keys`` from a node about to be readmitted, as a client would (any protocol)."""
        replies = await self.exchange(endpoint.link, [(b"DEL", key) for key in keys])
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is not None:
            raise failed

    def primaries(self) -> int:
        return len(self._keyless_shards())

    def _keyless_shards(self) -> list[Shard]:
        """Where DBSIZE, KEYS, SCAN and FLUSHDB go: the ring's nodes, and removed ones still draining."""
        shards = list(self.pool.shards.values())
        addresses = {s.active.address for s in shards}
        return shards + [s for s in self.retiring.values() if s.active.address not in addresses]

    async def on_primary(self, index: int, args: tuple[bytes, ...]) -> Any:
        shards = self._keyless_shards()
        if index >= len(shards):  # a SCAN cursor from before a drained node was closed
            return None
        shard = shards[index]
        if shard.state == "ejected":
            if args[0].upper() == b"FLUSHDB":
                shard.stale = None  # all it holds: emptied before it is readmitted
            return None  # nothing to read from a node that is out
        (reply,) = await self._on_shard(shard, [args])
        if isinstance(reply, Exception):
            raise reply
        return reply

    def status(self) -> dict[str, Any]:
        migration = self.migration or self.last_migration
        return {"backend": self.kind, "protocol": self.protocol, "nodes": self.pool.status(), "ringMembers": len(self.pool.ring),
                "ejections": self.pool.ejections, "takeovers": self.pool.takeovers,
                "rebalance": migration.status() if migration else None}

    async def close(self) -> None:
        if self.migration is not None and self.migration.task is not None:
            self.migration.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.migration.task
        for shard in self.retiring.values():
            await close_shard(shard)
        await self.pool.close()


_closing: set[asyncio.Task[Any]] = set()  # the loop keeps only a weak reference to a task


def _close_soon(client: Any) -> None:
    task = asyncio.get_running_loop().create_task(client.aclose())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def configs_by_name(configs: list[ShardConfig]) -> dict[str, ShardConfig]:
    grouped: dict[str, ShardConfig] = {}
    for config in configs:
        grouped[config.name] = config
    return grouped


__all__ = ["ShardConfig", "ShardedBackend"]
