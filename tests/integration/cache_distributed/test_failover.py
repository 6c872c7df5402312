"""Failure detection: a dead node is ejected and its share rehashes; it is probed and readmitted;
with a replica, the replica is promoted and takes the node's traffic."""

from __future__ import annotations

import redis.asyncio as aioredis

from mezzo.cache.distributed.backend import Call, HealthPolicy, NodeAddress, NodeUnavailable
from mezzo.cache.distributed.ring import KetamaRing
from mezzo.cache.distributed.sharded import ShardConfig, ShardedBackend
from mezzo.testing.fixtures import wait_for

from .redis_procs import RedisProcess, RedisServers

POLICY = HealthPolicy(timeout=0.5, eject_after=2, probe_interval=0.05, probe_max_interval=0.4)


def config(server: RedisProcess, replica: RedisProcess | None = None) -> ShardConfig:
    return ShardConfig(f"127.0.0.1:{server.port}", 1, NodeAddress("127.0.0.1", server.port),
                       NodeAddress("127.0.0.1", replica.port) if replica else None)


def node_state(backend: ShardedBackend, name: str) -> dict:
    return next(n for n in backend.status()["nodes"] if n["name"] == name)


async def test_a_dead_node_is_ejected_probed_and_readmitted(redis_servers: RedisServers) -> None:
    servers = [redis_servers.start() for _ in range(3)]
    backend = ShardedBackend([config(s) for s in servers], POLICY)
    ring = KetamaRing((f"127.0.0.1:{s.port}", 1) for s in servers)
    victim = f"127.0.0.1:{servers[1].port}"
    keys = [f"f{i}".encode() for i in range(300)]
    lost = [k for k in keys if ring.node_for(k) == victim]
    kept = [k for k in keys if ring.node_for(k) != victim]
    try:
        await backend.run([Call(k, (b"SET", k, k), "write") for k in keys])
        servers[1].kill()
        first = await backend.run([Call(k, (b"GET", k), "read") for k in keys])
        assert any(isinstance(r, NodeUnavailable) for r in first)  # inside the detection window

        async def answers_without_errors() -> bool:
            replies = await backend.run([Call(k, (b"GET", k), "read") for k in keys])
            return not any(isinstance(r, Exception) for r in replies)

        await wait_for(answers_without_errors, timeout=10)
        assert node_state(backend, victim)["state"] == "ejected" and backend.status()["ringMembers"] == 2
        # the lost share misses, the rest still hits
        assert await backend.run([Call(k, (b"GET", k), "read") for k in lost]) == [None] * len(lost)
        assert await backend.run([Call(k, (b"GET", k), "read") for k in kept]) == kept
        # the lost share can be written again: it lives on the other nodes meanwhile
        await backend.run([Call(k, (b"SET", k, b"again"), "write") for k in lost])
        assert await backend.run([Call(k, (b"GET", k), "read") for k in lost]) == [b"again"] * len(lost)

        redis_servers.restart(servers[1])
        await wait_for(lambda: node_state(backend, victim)["state"] == "healthy", timeout=15)
        assert backend.status()["ringMembers"] == 3
        await wait_for(lambda: backend.migration is None, timeout=30)
        # what was written during the ejection moved back to the readmitted node
        assert await backend.run([Call(k, (b"GET", k), "read") for k in lost]) == [b"again"] * len(lost)
        back = aioredis.Redis(port=servers[1].port)
        assert await back.dbsize() == len(lost)
        await back.aclose()
        assert backend.status()["ejections"] == 1
    finally:
        await backend.close()


async def test_a_replica_takes_over_and_the_old_primary_follows_it(redis_servers: RedisServers) -> None:
    primary = redis_servers.start()
    replica = redis_servers.start("--replicaof", "127.0.0.1", str(primary.port))
    other = redis_servers.start()
    backend = ShardedBackend([config(primary, replica), config(other)], POLICY)
    name = f"127.0.0.1:{primary.port}"
    ring = KetamaRing([(name, 1), (f"127.0.0.1:{other.port}", 1)])
    keys = [f"r{i}".encode() for i in range(200)]
    mine = [k for k in keys if ring.node_for(k) == name]
    try:
        await backend.run([Call(k, (b"SET", k, k), "write") for k in keys])
        follower = aioredis.Redis(port=replica.port)

        async def replicated() -> bool:
            return await follower.dbsize() == len(mine)

        await wait_for(replicated, timeout=10)
        primary.kill()

        async def served() -> bool:
            replies = await backend.run([Call(k, (b"GET", k), "read") for k in keys])
            return not any(isinstance(r, Exception) for r in replies)

        await wait_for(served, timeout=10)
        state = node_state(backend, name)
        assert state["state"] == "healthy" and state["primary"] == f"127.0.0.1:{replica.port}"
        assert backend.status()["ringMembers"] == 2 and backend.status()["takeovers"] == 1
        # no share was lost: the replica had it all, and it takes writes now
        assert await backend.run([Call(k, (b"GET", k), "read") for k in keys]) == keys
        assert await backend.run([Call(k, (b"SET", k, b"w"), "write") for k in mine]) == [b"OK"] * len(mine)
        # the old primary comes back empty and is made a replica of the new one
        redis_servers.restart(primary)
        returned = aioredis.Redis(port=primary.port)

        async def following() -> bool:
            info = await returned.info("replication")
            return info.get("role") == "slave" and info.get("master_port") == replica.port

        await wait_for(following, timeout=20)
        await returned.aclose()
        await follower.aclose()
    finally:
        await backend.close()


async def test_a_node_with_a_password_and_a_database(redis_servers: RedisServers) -> None:
    locked = redis_servers.start("--requirepass", "s3cret")
    address = NodeAddress("127.0.0.1", locked.port, db=4, password="s3cret")
    backend = ShardedBackend([ShardConfig(address.label, 1, address)], POLICY)
    wrong = ShardedBackend([ShardConfig(address.label, 1, NodeAddress("127.0.0.1", locked.port, password="nope"))],
                           POLICY)
    try:
        assert await backend.run([Call(b"k", (b"SET", b"k", b"v"), "write")]) == [b"OK"]
        direct = aioredis.Redis(port=locked.port, password="s3cret", db=4)
        assert await direct.get("k") == b"v"
        await direct.aclose()
        (refused,) = await wrong.run([Call(b"k", (b"GET", b"k"))])
        assert isinstance(refused, NodeUnavailable) and "refused" in str(refused)
    finally:
        await backend.close()
        await wrong.close()
