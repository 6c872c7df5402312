"""Near-cache benchmark: a hit in the SDK's near cache against a redis-py GET to redis-server, in one run.

    .venv/bin/python bench/cache_near.py [--keys 1000] [--ops 200000] [--rounds 3]

Both sides read the same ``--keys`` keys (100-byte values) in turn, one awaited call at a time,
from one asyncio task: what an application sees per read. Mezzo: ``await client.cache.get(key)``
with the near cache on (every read a local hit: the script checks the hit counter), against a
``mezzo up`` it starts. Redis: ``await redis.asyncio.Redis.get(key)`` on redis-server at
127.0.0.1:6379 (keys under a prefix of this run, deleted at the end). Rounds alternate between the
two; the median round of each is reported, with the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import machine  # bench/machine.py: the machine's speed around the measurement
import redis.asyncio as aioredis

from mezzo import Mezzo
from mezzo.testing.fixtures import spawn_node, stop_process

VALUE = b"v" * 100


async def near_round(client: Mezzo, keys: list[str], ops: int) -> float:
    get = client.cache.get
    n = len(keys)
    started = time.perf_counter()
    for i in range(ops):
        await get(keys[i % n])
    return ops / (time.perf_counter() - started)


async def redis_round(r: aioredis.Redis, keys: list[str], ops: int) -> float:
    get = r.get
    n = len(keys)
    started = time.perf_counter()
    for i in range(ops):
        await get(keys[i % n])
    return ops / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    prefix = f"mezzo-bench-near:{uuid.uuid4().hex[:8]}:"
    keys = [f"{prefix}{i}" for i in range(args.keys)]
    r = aioredis.Redis(host="127.0.0.1", port=6379)
    try:
        await r.ping()
    except Exception as exc:
        sys.exit(f"redis-server is not reachable on 127.0.0.1:6379: {exc}")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        node = spawn_node(data, {"MEZZO_LOG_LEVEL": "warning"})
        try:
            async with Mezzo(node.url, node.token) as client:
                await r.mset({key: VALUE for key in keys})
                for key in keys:
                    await client.cache.set(key, VALUE)
                near = await client.cache.near_cache(max_keys=args.keys * 2, max_ttl=3600)
                if not near.live:
                    sys.exit("the near cache's invalidation stream did not come up")
                for key in keys:  # warm: every later read is a local hit
                    assert await client.cache.get(key) == VALUE
                near_rates, redis_rates = [], []
                for _ in range(args.rounds):
                    hits = near.hits
                    near_rates.append(await near_round(client, keys, args.ops))
                    if near.hits - hits != args.ops:
                        sys.exit(f"only {near.hits - hits} of {args.ops} reads were near-cache hits")
                    redis_rates.append(await redis_round(r, keys, max(args.ops // 20, 1000)))
        finally:
            stop_process(node)
            await r.delete(*keys)
            await r.aclose()
    mezzo_rate, redis_rate = statistics.median(near_rates), statistics.median(redis_rates)
    print(f"keys {args.keys}, near-cache reads {args.ops} per round, {args.rounds} rounds (median)")
    print(f"mezzo SDK near-cache hit   {mezzo_rate:>12,.0f} reads/s   {1e6 / mezzo_rate:8.2f} us/read")
    print(f"redis-py GET redis-server  {redis_rate:>12,.0f} reads/s   {1e6 / redis_rate:8.2f} us/read")
    print(f"ratio (mezzo / redis)      {mezzo_rate / redis_rate:>12.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--ops", type=int, default=200_000, help="near-cache reads per round (redis: a twentieth)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with machine.reported():
        asyncio.run(main(args))
