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


# Deletes KEYS[1] only while it still holds the value dumped as ARGV[1]: 1 deleted, 0 gone, -1 changed.
DEL_IF_SAME = """
local now = redis.call('DUMP', KEYS[1])
if not now then return 0 end
if now ~= ARGV[1] then return -1 end
return redis.call('DEL', KEYS[1])
"""


_moves: dict[tuple[int, bytes], asyncio.Future[bool]] = {}  # moves in progress, by source and key


async def move_key(key: bytes, source: Shard, target: Shard) -> bool:
    """Copy ``key`` from ``source`` to ``target`` unless it is there already, then drop it at the source.

    A client may delete the key (at both owners) between the DUMP and the RESTORE: the source is
    then emptied only if it still holds what was copied, and a copy of a key deleted meanwhile is
    taken back, so a delete is never undone by the move. A key is moved by one task at a time (the
    migration and a client's write may both want it): a second mover waits for the first."""
    slot = (id(source), key)
    running = _moves.get(slot)
    if running is None:
        running = _moves[slot] = asyncio.ensure_future(_move(key, source, target))
        running.add_done_callback(lambda done: _moves.pop(slot, None) if _moves.get(slot) is done else None)
        running.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved
    return await asyncio.shield(running)  # a cancelled caller leaves no half-moved key


async def _move(key: bytes, source: Shard, target: Shard) -> bool:
    pipe = source.active.client.pipeline(transaction=False)
    pipe.execute_command("DUMP", key)
    pipe.execute_command("PTTL", key)
    dump, pttl = await pipe.execute()
    if dump is None:
        return False
    if isinstance(pttl, int) and pttl == -2:
        return False
    ttl = pttl if isinstance(pttl, int) and pttl > 0 else 0
    try:
        await target.active.client.execute_command("RESTORE", key, ttl, dump)
    except ResponseError as exc:
        if not str(exc).startswith("BUSYKEY"):
            raise
        # written at the new owner meanwhile: the newer value stays, the old copy goes
        await source.active.client.execute_command("DEL", key)
        return False
    left = await source.active.client.execute_command("EVAL", DEL_IF_SAME, 1, key, dump)
    if left == 0:  # deleted at the source after the DUMP: the copy must not bring it back
        await target.active.client.execute_command("EVAL", DEL_IF_SAME, 1, key, dump)
        return False
    return True


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
