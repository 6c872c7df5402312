"""Online rebalancing: move keys to their owner under a new ring, in the background.

Every source node is walked with ``SCAN``; each key whose owner changed is copied with ``DUMP`` +
``PTTL`` + ``RESTORE`` (TTL kept) and then deleted from the source. ``RESTORE`` never replaces:
if the new owner already has the key, a client wrote it there after the ring changed, and that
newer value wins. While a migration runs, the router reads from the new owner and falls back to
the old one on a miss, and moves a key on first write, so clients see every key throughout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.exceptions import ResponseError

from mezzo.cache.distributed.pool import NODE_ERRORS, Shard
from mezzo.cache.distributed.ring import KetamaRing

log = structlog.get_logger("mezzo.cache")
SCAN_COUNT = 500


async def move_key(key: bytes, source: Shard, target: Shard) -> bool:
    """Copy ``key`` from ``source`` to ``target`` unless it is there already, then drop it at the source."""
    pipe = source.active.client.pipeline(transaction=False)
    pipe.execute_command("DUMP", key)
    pipe.execute_command("PTTL", key)
    dump, pttl = await pipe.execute()
    if dump is None:
        return False
    if isinstance(pttl, int) and pttl == -2:
        return False
    ttl = pttl if isinstance(pttl, int) and pttl > 0 else 0
    moved = True
    try:
        await target.active.client.execute_command("RESTORE", key, ttl, dump)
    except ResponseError as exc:
        if not str(exc).startswith("BUSYKEY"):
            raise
        moved = False  # written at the new owner meanwhile: the newer value stays
    await source.active.client.execute_command("DEL", key)
    return moved


@dataclass
class Migration:
    old: KetamaRing
    new: KetamaRing
    reason: str
    sources: dict[str, Shard] = field(default_factory=dict)  # the old ring's members by name
    started: float = field(default_factory=time.time)
    finished: float | None = None
    scanned: int = 0
    moved: int = 0
    errors: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.finished is None

    def status(self) -> dict[str, Any]:
        return {"reason": self.reason, "running": self.running, "startedAt": self.started,
                "finishedAt": self.finished, "scanned": self.scanned, "moved": self.moved, "errors": self.errors}


async def migrate(migration: Migration, shards: Callable[[], dict[str, Shard]]) -> None:
    """Walk every reachable node and move the keys it holds that another node now owns."""
    try:
        for source in list(shards().values()):
            if source.state == "ejected":
                continue
            await _drain(migration, source, shards)
    finally:
        migration.finished = time.time()
        log.info("cache rebalance finished", reason=migration.reason, scanned=migration.scanned,
                 moved=migration.moved, errors=migration.errors)


async def _drain(migration: Migration, source: Shard, shards: Callable[[], dict[str, Shard]]) -> None:
    cursor: int | bytes = 0
    while True:
        try:
            cursor, keys = await source.active.client.execute_command("SCAN", cursor, "COUNT", SCAN_COUNT)
        except NODE_ERRORS:
            migration.errors += 1
            log.warning("cache rebalance could not scan a node; skipping it", node=source.name)
            return
        for key in keys:
            migration.scanned += 1
            owner = migration.new.node_for(key)
            target = shards().get(owner)
            if (target is None or target is source or target.state == "ejected"
                    or target.active.address == source.active.address):  # the same Redis under a new entry
                continue
            try:
                migration.moved += await move_key(key, source, target)
            except (*NODE_ERRORS, ResponseError) as exc:
                migration.errors += 1
                log.warning("cache key not moved", node=source.name, to=owner, error=str(exc))
        if int(cursor) == 0:
            return
