"""A cache over memcached nodes: the ketama ring, health policy and ejection of Redis nodes, with
calls spoken in memcached's meta protocol, as twemproxy and mcrouter front memcached.

Each node has one pipelined connection for proxied calls (``MetaLink``: link.py's FIFO matching
with the meta reader) and one for probes. Redis commands become meta requests in meta_ops.py.
memcached cannot list its keys, so nothing is migrated: when the ring changes (a node added,
removed, ejected or readmitted) the keys whose owner changed miss until clients write them again,
as with twemproxy and mcrouter, and a requested rebalance is refused (``NotRebalanced``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import structlog

from mezzo.cache.distributed.backend import HealthPolicy, NodeAddress, NotRebalanced
from mezzo.cache.distributed.link import NodeLink
from mezzo.cache.distributed.meta import FLUSH_ALL, NOOP, MetaReader, MetaReply, ReplyError
from mezzo.cache.distributed.meta_ops import MAYBE_MORE, MORE, ONE, SERVED, Op, Steps, translate
from mezzo.cache.distributed.pool import Shard, close_shard
from mezzo.cache.distributed.ring import KetamaRing
from mezzo.cache.distributed.sharded import ShardedBackend

log = structlog.get_logger("mezzo.cache")
NO_MIGRATION = ("memcached cannot list its keys, so none are moved: keys whose node changed miss "
                "until they are written again")


class MetaLink(NodeLink):
    """link.py's pipelined connection, carrying meta requests (already encoded) and replies."""

    def new_reader(self) -> MetaReader:
        return MetaReader()

    def encode(self, commands: list[Any]) -> list[bytes]:
        return commands

    def setup(self) -> list[tuple[Any, ...]]:
        return []  # no AUTH or SELECT in memcached's text protocol


class MetaControl:
    """The pool's control client for a memcached node: ``PING`` is ``mn``, ``FLUSHDB`` (a node
    readmitted after an ejection, whose keys may be stale) is ``flush_all``."""

    REQUESTS = {"PING": NOOP, "FLUSHDB": FLUSH_ALL}

    def __init__(self, address: NodeAddress, policy: HealthPolicy) -> None:
        self.link = MetaLink(address, policy.timeout)

    async def execute_command(self, name: str, *args: Any) -> MetaReply:
        request = self.REQUESTS.get(name)
        if request is None:
            raise ValueError(f"{name} has no memcached counterpart")
        (reply,) = await self.link.call([request])
        if reply.code == b"ER":
            raise reply.error()
        return reply  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        self.link.close()


async def run_ops(link: NodeLink, ops: list[Op]) -> list[Any]:
    """Every op's reply, in order. First rounds go out together in one pipeline; an op that needs
    more rounds gets them before the ops after it that could see the difference are sent."""
    results: list[Any] = [None] * len(ops)
    for start, end in _segments(ops):
        sent: list[tuple[int, int]] = []
        requests: list[bytes] = []
        for i in range(start, end):
            try:
                first = next(ops[i].steps)
            except StopIteration as answered:  # refused before reaching the node
                results[i] = answered.value
                continue
            except Exception as exc:
                results[i] = _bug(exc)
                continue
            sent.append((i, len(first)))
            requests.extend(first)
        replies = await link.call(requests) if requests else []
        pos = 0
        for i, count in sent:
            results[i] = await _finish(link, ops[i].steps, replies[pos:pos + count])
            pos += count
    return results


async def _finish(link: NodeLink, steps: Steps, replies: list[MetaReply]) -> Any:
    while True:
        try:
            more = steps.send(replies)
        except StopIteration as done:
            return done.value
        except Exception as exc:
            return _bug(exc)
        replies = await link.call(more)


def _bug(exc: Exception) -> ReplyError:
    """A reply this code did not expect: answered as an error, never a failed batch."""
    log.exception("memcached reply not understood", exc_info=exc)
    return ReplyError(f"ERR memcached reply not understood ({type(exc).__name__})")


def _segments(ops: Sequence[Op]) -> list[tuple[int, int]]:
    """Runs of ops sent in one pipeline. A run ends after an op that always takes more rounds, and
    after one that may, when another command on its key follows in the batch."""
    if len(ops) == 1 or all(op.rounds == ONE for op in ops):
        return [(0, len(ops))]
    mixed: set[bytes] = set()
    if any(op.rounds == MAYBE_MORE for op in ops):
        seen: dict[bytes, bytes] = {}
        for op in ops:
            if seen.setdefault(op.key, op.command) != op.command:
                mixed.add(op.key)
    segments, start = [], 0
    for i, op in enumerate(ops):
        if op.rounds == MORE or (op.rounds == MAYBE_MORE and op.key in mixed):
            segments.append((start, i + 1))
            start = i + 1
    if start < len(ops):
        segments.append((start, len(ops)))
    return segments


class MemcachedBackend(ShardedBackend):
    protocol = "memcached"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ring_change: dict[str, Any] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def control(self, address: NodeAddress, policy: HealthPolicy) -> MetaControl:
        return MetaControl(address, policy)

    def new_link(self, address: NodeAddress, policy: HealthPolicy) -> NodeLink:
        return MetaLink(address, policy.timeout)

    def refuses(self, command: bytes) -> str | None:
        if command in SERVED:
            return None
        return f"'{command.decode(errors='replace').upper()[:64]}' is not supported on memcached nodes"

    async def exchange(self, link: NodeLink, commands: list[tuple[bytes, ...]]) -> list[Any]:
        return await run_ops(link, [translate(c) for c in commands])

    def _start_migration(self, old: KetamaRing, new: KetamaRing, reason: str,
                         sources: dict[str, Shard] | None = None) -> None:
        """Nothing to move: note the change, and close removed nodes once calls in flight are answered."""
        self.ring_change = {"reason": reason, "running": False, "startedAt": time.time(), "finishedAt": time.time(),
                            "scanned": 0, "moved": 0, "errors": 0, "detail": NO_MIGRATION}
        log.info("cache ring changed on memcached nodes: no keys are moved", reason=reason, members=len(new))
        retiring, self.retiring = list(self.retiring.values()), {}
        if retiring:
            task = asyncio.get_running_loop().create_task(self._close_later(retiring), name="mezzo-cache-retire-node")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_later(self, shards: list[Shard]) -> None:
        try:
            await asyncio.sleep(self.policy.timeout * 2)
        finally:
            for shard in shards:
                await close_shard(shard)

    async def rebalance(self) -> dict[str, Any]:
        raise NotRebalanced(NO_MIGRATION)

    def status(self) -> dict[str, Any]:
        return {**super().status(), "rebalance": self.ring_change}

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()  # closes its shards now
        await asyncio.gather(*self._closing, return_exceptions=True)
        await super().close()


__all__ = ["MemcachedBackend", "MetaControl", "MetaLink", "run_ops"]
