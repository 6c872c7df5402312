"""A cache over Redis Cluster: slots, MOVED/ASK redirects and topology refreshes are redis-py's
cluster client's job; this adapter batches a proxy read into one cluster pipeline and forwards
raw replies. Rebalancing is the cluster's own (``redis-cli --cluster rebalance``)."""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from mezzo.cache.distributed.backend import Call, HealthPolicy, NodeAddress, NodeUnavailable
from mezzo.cache.distributed.pool import NODE_ERRORS, NodeSSLConnection, client_options

# Commands whose replies the proxy forwards as they come; redis-py's parsers for them are dropped.
RAW_REPLIES = ("GET", "SET", "SETNX", "SETEX", "PSETEX", "MGET", "MSET", "GETDEL", "GETEX", "APPEND", "STRLEN",
               "INCR", "DECR", "INCRBY", "DECRBY", "INCRBYFLOAT", "DEL", "UNLINK", "EXISTS", "EXPIRE", "PEXPIRE",
               "PERSIST", "TTL", "PTTL", "TYPE", "HSET", "HMSET", "HGET", "HMGET", "HDEL", "HGETALL", "HKEYS",
               "HVALS", "HEXISTS", "HLEN", "HINCRBY", "DBSIZE", "FLUSHDB", "KEYS", "SCAN", "PING", "EXPIREAT",
               "PEXPIREAT", "EXPIRETIME", "PEXPIRETIME", "GETRANGE", "SUBSTR", "SETRANGE", "HINCRBYFLOAT", "OBJECT")


class ClusterBackend:
    kind = "redis-cluster"

    def __init__(self, seeds: list[NodeAddress], policy: HealthPolicy) -> None:
        # One set of credentials and TLS options for every node (the spec's seeds share them).
        self.client = RedisCluster(startup_nodes=[ClusterNode(a.host, a.port) for a in seeds],
                                   socket_timeout=policy.timeout, socket_connect_timeout=policy.timeout,
                                   max_connections=policy.max_connections, require_full_coverage=False,
                                   protocol=2, **client_options(seeds[0]))
        for name in RAW_REPLIES:
            self.client.response_callbacks.pop(name, None)
        if seeds[0].tls is not None:  # TLS files read at each connect, for seeds and discovered nodes alike
            self.client.connection_kwargs["connection_class"] = NodeSSLConnection
            for node in self.client.startup_nodes:
                node.connection_class = NodeSSLConnection
        self.failures = 0
        self.last_error: str | None = None

    async def run(self, calls: list[Call]) -> list[Any]:
        try:
            if len(calls) == 1:
                try:
                    return [await self.client.execute_command(*_named(calls[0].args))]
                except NODE_ERRORS:
                    raise
                except RedisError as exc:
                    return [exc]
            pipe = self.client.pipeline()
            for call in calls:
                pipe.execute_command(*_named(call.args))
            return list(await pipe.execute(raise_on_error=False))
        except (*NODE_ERRORS, RedisClusterException) as exc:  # no seed reachable (or usable) is one too
            self.failures += 1
            self.last_error = str(exc) or type(exc).__name__
            return [NodeUnavailable(f"redis cluster is unavailable ({type(exc).__name__})")] * len(calls)

    async def _primaries(self) -> list[ClusterNode]:
        await self.client.initialize()
        return sorted(self.client.get_primaries(), key=lambda n: n.name)

    def refuses(self, command: bytes) -> str | None:
        return None

    def primaries(self) -> int:
        return len(self.client.get_primaries()) or 1

    async def on_primary(self, index: int, args: tuple[bytes, ...]) -> Any:
        nodes = await self._primaries()
        if index >= len(nodes):
            return None
        return await nodes[index].execute_command(*_named(args))

    async def rebalance(self) -> dict[str, Any]:
        return {"reason": "requested", "running": False,
                "detail": "Redis Cluster moves slots itself: use redis-cli --cluster rebalance"}

    def status(self) -> dict[str, Any]:
        nodes = [{"name": n.name, "role": n.server_type, "state": "healthy"} for n in self.client.get_nodes()]
        return {"backend": self.kind, "nodes": sorted(nodes, key=lambda n: n["name"]), "errors": self.failures,
                "lastError": self.last_error, "rebalance": None}

    async def close(self) -> None:
        await self.client.aclose()


def _named(args: tuple[bytes, ...]) -> tuple[str | bytes, ...]:
    """redis-py's cluster client looks commands up by ``str`` name (for slots and routing policies),
    and a subcommand too (``OBJECT ENCODING key``: its key is found from ``object|encoding``)."""
    name = args[0].decode().upper()
    if name == "OBJECT" and len(args) > 1:
        return (name, bytes(args[1]).decode(errors="replace"), *args[2:])
    return (name, *args[1:])
