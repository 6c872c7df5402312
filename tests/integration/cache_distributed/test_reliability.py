"""Reliability: three Redis nodes behind the proxy, load running, one node SIGKILLed (or frozen).

The cache keeps answering: errors only inside the detection window (until the node is ejected),
misses for the lost share afterwards, hits for the rest. The error count and the window's length
are printed (``pytest -s``) for docs/cache-distributed.md; the test asserts behaviour, not timings.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from dataclasses import dataclass, field

import httpx
import pytest
import redis.asyncio as aioredis

from mezzo.cache.distributed.ring import KetamaRing
from mezzo.testing.fixtures import RunningNode, wait_for

from .redis_procs import RedisServers

WORKERS = 8
KEYS = 600


@dataclass
class Load:
    ops: int = 0
    errors: list[float] = field(default_factory=list)  # monotonic time of each failed operation
    hits: int = 0
    misses: int = 0
    running: bool = True


async def worker(client: aioredis.Redis, keys: list[str], load: Load) -> None:
    rng = random.Random()
    while load.running:
        key = rng.choice(keys)
        try:
            if rng.random() < 0.8:
                if await client.get(key) is None:
                    load.misses += 1
                else:
                    load.hits += 1
            else:
                await client.set(key, key)
        except (aioredis.ResponseError, aioredis.ConnectionError, aioredis.TimeoutError):
            load.errors.append(time.monotonic())
        load.ops += 1


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["sigkill", "sigstop"])
async def test_killing_a_node_under_load(node: RunningNode, redis_servers: RedisServers, sig: int) -> None:
    """SIGKILL: connections are refused at once. SIGSTOP: the node hangs, so only timeouts tell."""
    servers = [redis_servers.start() for _ in range(3)]
    nodes = "".join(f"    - url: {s.url}\n" for s in servers)
    async with node.client() as client:
        await client.resources.apply(
            "apiVersion: mezzo.dev/v1\nkind: Cache\nmetadata: {name: load}\nspec:\n  backend: nodes\n  database: 7\n"
            f"  failureDetection: {{timeout: 500ms, ejectAfter: 3, probeInterval: 100ms}}\n  nodes:\n{nodes}")
    http = httpx.AsyncClient(base_url=node.url, headers={"authorization": f"Bearer {node.token}"})

    async def status() -> dict:
        return (await http.get("/v1/cache/load/nodes")).json()

    async def ready() -> bool:
        return (await http.get("/v1/cache/load/nodes")).status_code == 200

    await wait_for(ready, timeout=10)
    port = int(node.node.url("resp").rsplit(":", 1)[1])
    r = aioredis.Redis(port=port, password=node.token, db=7, max_connections=WORKERS + 2)
    keys = [f"load:{i}" for i in range(KEYS)]
    ring = KetamaRing((f"127.0.0.1:{s.port}", 1) for s in servers)
    victim = servers[0]
    victim_name = f"127.0.0.1:{victim.port}"
    lost = {k for k in keys if ring.node_for(k.encode()) == victim_name}
    load = Load()
    tasks: list[asyncio.Task[None]] = []
    try:
        await r.mset({k: k for k in keys})
        tasks = [asyncio.create_task(worker(r, keys, load)) for _ in range(WORKERS)]
        await wait_for(lambda: load.ops > 2000, timeout=30)
        assert not load.errors
        before = load.ops
        killed_at = time.monotonic()
        victim.process.send_signal(sig)

        async def ejected() -> bool:
            nodes = (await status())["nodes"]
            return any(n["name"] == victim_name and n["state"] == "ejected" for n in nodes)

        await wait_for(ejected, timeout=15)
        ejected_at = time.monotonic()
        settled = load.ops
        await wait_for(lambda: load.ops > settled + 3000, timeout=60)
        load.running = False
        await asyncio.gather(*tasks)
        errors_after = [t for t in load.errors if t > ejected_at]
        window = (max(load.errors) - killed_at) if load.errors else 0.0
        print(f"\nreliability ({signal.Signals(sig).name}): {load.ops - before} ops after the signal, {len(load.errors)} errors, "
              f"last error {window * 1000:.0f} ms after it, ejected after {(ejected_at - killed_at) * 1000:.0f} ms,"
              f" {load.hits} hits, {load.misses} misses")
        assert not errors_after  # errors only inside the detection window
        # after the window the cache answers every key: a miss for the lost share, a hit for the rest
        values = await r.mget(keys)
        for key, value in zip(keys, values, strict=True):
            if key not in lost:
                assert value == key.encode()
        assert (await status())["ringMembers"] == 2
        metrics = (await http.get("/metrics")).text
        assert f'mezzo_cache_node_up{{namespace="load",node="{victim_name}"}} 0.0' in metrics
        assert 'mezzo_cache_node_ejections_total{namespace="load"} 1.0' in metrics
    finally:
        load.running = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await r.aclose()
        await http.aclose()
