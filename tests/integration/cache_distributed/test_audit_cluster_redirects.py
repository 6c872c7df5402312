"""Redis Cluster through the proxy while a slot moves (issue 8: "native slots, MOVED/ASK handled"):
mid-migration the old owner answers ASK, afterwards MOVED, and clients of the proxy never see either."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from mezzo.testing.fixtures import RunningNode, wait_for

from .redis_procs import RedisServers
from .test_proxy_nodes import resp_port


async def test_reads_and_writes_follow_a_slot_through_ask_and_moved(node: RunningNode,
                                                                   redis_servers: RedisServers) -> None:
    members = redis_servers.cluster(3)
    urls = ", ".join(f"'{m.url}'" for m in members)
    async with node.client() as client:
        await client.resources.apply("apiVersion: mezzo.dev/v1\nkind: Cache\nmetadata: {name: moving}\n"
                                     f"spec: {{backend: redis-cluster, urls: [{urls}], database: 7}}\n")
    r = aioredis.Redis(port=resp_port(node), password=node.token, db=7)
    direct = RedisCluster(host="127.0.0.1", port=members[0].port)
    admins = {m.port: aioredis.Redis(port=m.port) for m in members}
    try:
        async def proxied() -> bool:
            try:
                return bool(await r.set("{cart}:a", "1"))
            except aioredis.ResponseError:
                return False

        await wait_for(proxied, timeout=10)
        assert await r.mset({"{cart}:b": "2", "other": "x"}) and await r.get("{cart}:a") == b"1"  # slots now cached
        await direct.initialize()
        slot = direct.keyslot("{cart}:a")
        source = direct.get_node_from_key("{cart}:a")
        target = next(m for m in members if m.port != source.port)
        ids = {port: (await admin.execute_command("CLUSTER", "MYID")).decode() for port, admin in admins.items()}
        old, new = admins[source.port], admins[target.port]
        await new.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
        await old.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
        await old.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", "{cart}:a")

        # {cart}:a moved, {cart}:b not yet: the old owner answers ASK for the first
        assert await r.get("{cart}:a") == b"1" and await r.get("{cart}:b") == b"2"
        assert await r.mget("{cart}:a", "{cart}:b", "other") == [b"1", b"2", b"x"]
        assert await r.incr("{cart}:n") == 1  # a new key of a migrating slot is created at the importer

        await old.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", "{cart}:b")
        for admin in admins.values():
            await admin.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])

        # the proxy's map still names the old owner, which answers MOVED now
        assert await r.get("{cart}:b") == b"2"
        async with r.pipeline(transaction=False) as pipe:
            pipe.get("{cart}:a").incr("{cart}:n").mget("{cart}:a", "{cart}:b")
            assert await pipe.execute() == [b"1", 2, [b"1", b"2"]]
        moved = [await admin.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) for admin in (old, new)]
        assert moved == [0, 3]  # {cart}:a, {cart}:b and {cart}:n really are on the new owner
    finally:
        await r.aclose()
        await direct.aclose()
        for admin in admins.values():
            await admin.aclose()
