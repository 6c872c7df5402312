"""Regressions from the distributed cache review (issue 8) on real Redis nodes: one stall is one
failure, a one-node ring is never ejected nor flushed, and a readmitted node loses only its stale keys."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from mezzo.cache.distributed.backend import Call, HealthPolicy, NodeAddress
from mezzo.cache.distributed.migrate import move_key
from mezzo.cache.distributed.namespaces import shard_configs
from mezzo.cache.distributed.ring import KetamaRing
from mezzo.cache.distributed.sharded import ShardConfig, ShardedBackend
from mezzo.cache.model import CacheSpec
from mezzo.testing.fixtures import wait_for

from .redis_procs import RedisProcess, RedisServers

POLICY = HealthPolicy(timeout=0.3, eject_after=2, probe_interval=0.05, probe_max_interval=0.4)


def configs(servers: list[RedisProcess]) -> list[ShardConfig]:
    return [ShardConfig(f"127.0.0.1:{s.port}", 1, NodeAddress("127.0.0.1", s.port)) for s in servers]


def node_state(backend: ShardedBackend, name: str) -> dict:
    return next(n for n in backend.status()["nodes"] if n["name"] == name)


async def test_a_stall_of_a_one_node_ring_neither_ejects_nor_flushes_it(redis_servers: RedisServers) -> None:
    server = redis_servers.start()
    spec = CacheSpec.model_validate({"backend": "redis", "url": f"{server.url}/3",
                                     "failureDetection": {"timeout": "300ms", "ejectAfter": 2}})
    backend = ShardedBackend(shard_configs(spec), spec.failure_detection.policy(), kind="redis")
    app = aioredis.Redis(port=server.port, db=3)
    admin = aioredis.Redis(port=server.port)
    try:
        await app.set(b"app:unrelated", b"precious")  # the application's own data in the same database
        assert await backend.run([Call(b"k", (b"SET", b"k", b"v"), "write")]) == [b"OK"]
        for _ in range(3):  # three stalls, each failing many calls in flight at once
            await admin.execute_command("CLIENT", "PAUSE", "1000")  # as a fork or a slow script would
            replies = await asyncio.gather(*(backend.run([Call(b"k%d" % i, (b"GET", b"k%d" % i))])
                                             for i in range(10)))
            assert all(isinstance(r[0], Exception) for r in replies)

        async def answers() -> bool:
            return await backend.run([Call(b"k", (b"GET", b"k"))]) == [b"v"]

        await wait_for(answers, timeout=10)
        assert backend.status()["ejections"] == 0
        assert await app.get(b"app:unrelated") == b"precious"
    finally:
        await backend.close()
        await app.aclose()
        await admin.aclose()


async def test_one_break_fails_many_calls_but_counts_once(redis_servers: RedisServers) -> None:
    servers = [redis_servers.start() for _ in range(2)]
    names = [f"127.0.0.1:{s.port}" for s in servers]
    backend = ShardedBackend(configs(servers), HealthPolicy(timeout=0.3, eject_after=3, probe_interval=0.05,
                                                            probe_max_interval=0.4))
    ring = KetamaRing((n, 1) for n in names)
    keys = [k for k in (b"c%d" % i for i in range(200)) if ring.node_for(k) == names[0]][:20]
    admin = aioredis.Redis(port=servers[0].port)
    try:
        await admin.execute_command("CLIENT", "PAUSE", "1000")
        replies = await asyncio.gather(*(backend.run([Call(k, (b"GET", k))]) for k in keys))
        assert all(isinstance(r[0], Exception) for r in replies)
        assert node_state(backend, names[0])["failures"] == 1
        assert backend.status()["ejections"] == 0
    finally:
        await backend.close()
        await admin.aclose()


async def test_a_readmitted_node_loses_only_the_keys_changed_elsewhere(redis_servers: RedisServers) -> None:
    servers = [redis_servers.start() for _ in range(3)]
    names = [f"127.0.0.1:{s.port}" for s in servers]
    backend = ShardedBackend(configs(servers), POLICY)
    ring = KetamaRing((n, 1) for n in names)
    victim = names[1]
    mine = [k for k in (b"r%d" % i for i in range(600)) if ring.node_for(k) == victim]
    rewritten, deleted, untouched = mine[:20], mine[20:40], mine[40:]
    try:
        await backend.run([Call(k, (b"SET", k, b"old"), "write") for k in mine])
        servers[1].process.send_signal(signal.SIGSTOP)  # hangs, keeping its data

        async def ejected() -> bool:
            await backend.run([Call(k, (b"GET", k)) for k in mine[:5]])
            return node_state(backend, victim)["state"] == "ejected"

        await wait_for(ejected, timeout=15)
        await backend.run([Call(k, (b"SET", k, b"new"), "write") for k in rewritten])
        await backend.run([Call(k, (b"SET", k, b"gone"), "write") for k in deleted])
        await backend.run([Call(k, (b"DEL", k), "delete") for k in deleted])
        servers[1].process.send_signal(signal.SIGCONT)
        await wait_for(lambda: node_state(backend, victim)["state"] == "healthy", timeout=15)
        await wait_for(lambda: backend.migration is None, timeout=30)
        assert await backend.run([Call(k, (b"GET", k)) for k in rewritten]) == [b"new"] * len(rewritten)
        assert await backend.run([Call(k, (b"GET", k)) for k in deleted]) == [None] * len(deleted)
        # not emptied: what nobody changed while it was out is still there, and current
        assert await backend.run([Call(k, (b"GET", k)) for k in untouched]) == [b"old"] * len(untouched)
    finally:
        servers[1].process.send_signal(signal.SIGCONT)
        await backend.close()


async def held_still(backend: ShardedBackend, servers: list[RedisProcess]) -> None:
    """Apply a new node list and stop its migration: nothing moved yet."""
    await backend.reconfigure(configs(servers), POLICY)
    assert backend.migration is not None and backend.migration.task is not None
    backend.migration.task.cancel()


async def test_deletes_mid_migration_answer_for_keys_not_moved_yet(redis_servers: RedisServers) -> None:
    servers = [redis_servers.start() for _ in range(3)]
    backend = ShardedBackend(configs(servers[:2]), POLICY)
    ring = KetamaRing((f"127.0.0.1:{s.port}", 1) for s in servers)
    third = f"127.0.0.1:{servers[2].port}"
    keys = [b"m%d" % i for i in range(300)]
    moving = [k for k in keys if ring.node_for(k) == third]
    try:
        await backend.run([Call(k, (b"SET", k, b"v" + k), "write") for k in keys])
        await held_still(backend, servers)
        getdel, deleted = moving[:5], moving[5:15]
        assert await backend.run([Call(k, (b"GETDEL", k), "delete") for k in getdel]) == [b"v" + k for k in getdel]
        assert await backend.run([Call(k, (b"DEL", k), "delete") for k in deleted]) == [1] * len(deleted)
        gone = getdel + deleted
        assert await backend.run([Call(k, (b"GET", k)) for k in gone]) == [None] * len(gone)
    finally:
        await backend.close()


async def test_keyless_commands_reach_a_node_still_draining(redis_servers: RedisServers) -> None:
    servers = [redis_servers.start() for _ in range(3)]
    backend = ShardedBackend(configs(servers), POLICY)
    keys = [b"d%d" % i for i in range(200)]
    try:
        await backend.run([Call(k, (b"SET", k, k), "write") for k in keys])
        await held_still(backend, servers[:2])
        sizes = [await backend.on_primary(i, (b"DBSIZE",)) for i in range(backend.primaries())]
        assert sum(s for s in sizes if s is not None) == len(keys)
        for i in range(backend.primaries()):
            await backend.on_primary(i, (b"FLUSHDB",))
        for server in servers:
            conn = aioredis.Redis(port=server.port)
            assert await conn.dbsize() == 0
            await conn.aclose()
    finally:
        await backend.close()


async def test_a_delete_during_a_move_is_not_undone_and_a_failed_move_fails_no_call(
        redis_servers: RedisServers) -> None:
    servers = [redis_servers.start() for _ in range(3)]
    backend = ShardedBackend(configs(servers[:2]), POLICY)
    ring = KetamaRing((f"127.0.0.1:{s.port}", 1) for s in servers)
    third = f"127.0.0.1:{servers[2].port}"
    moving = [k for k in (b"x%d" % i for i in range(300)) if ring.node_for(k) == third]
    try:
        await backend.run([Call(k, (b"SET", k, b"v"), "write") for k in moving])
        await held_still(backend, servers)
        target = backend.pool.shards[third].active.client
        restore = target.execute_command

        async def deleted_before_restore(*args: Any) -> Any:
            if args[0] == "RESTORE":  # a client's DEL lands between the migration's DUMP and RESTORE
                await backend.run([Call(args[1], (b"DEL", args[1]), "delete")])
            return await restore(*args)

        target.execute_command = deleted_before_restore  # type: ignore[method-assign]
        assert backend.migration is not None
        source = backend.migration.sources[_old_owner(moving[0], servers)]
        assert await move_key(moving[0], source, backend.pool.shards[third]) is False
        target.execute_command = restore  # type: ignore[method-assign]
        assert await backend.run([Call(moving[0], (b"GET", moving[0]))]) == [None]
        for server in servers:
            conn = aioredis.Redis(port=server.port)
            assert not await conn.exists(moving[0])
            await conn.aclose()

        async def refused(*args: Any) -> Any:
            if args[0] == "RESTORE":
                raise ResponseError("ERR DUMP payload version or checksum are wrong")
            return await restore(*args)

        target.execute_command = refused  # type: ignore[method-assign]
        assert await backend.run([Call(moving[1], (b"SET", moving[1], b"w"), "write"),
                                  Call(b"other", (b"SET", b"other", b"1"), "write")]) == [b"OK", b"OK"]
    finally:
        await backend.close()


def _old_owner(key: bytes, servers: list[RedisProcess]) -> str:
    return KetamaRing((f"127.0.0.1:{s.port}", 1) for s in servers[:2]).node_for(key)
