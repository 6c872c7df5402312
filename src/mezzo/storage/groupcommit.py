"""Group commit for the PostgreSQL tables: the writes a node has waiting go to the server in one call.

Writers on one node arrive while the previous call is in flight; they queue and go together in
the next call (one round trip, one commit), each keeping its own compares and outcome. A group the
server refuses (so nothing of it was written) is retried one write at a time, so one bad write
fails only its own caller.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from mezzo.storage.kv import Compare, Op, Put, StoreError, TxnResult

MAX_BATCH = 256  # transactions per group commit
MAX_BATCH_OPS = 4096  # ops and compares per group commit (a bigger transaction still goes, alone)
MAX_BATCH_BYTES = 8 << 20  # bytes of values per group commit: a Bind message over 1 GB drops the connection


@dataclass(slots=True)
class Waiting:
    ops: Sequence[Op]
    compares: Sequence[Compare]
    future: asyncio.Future[TxnResult]


Outcomes = list[TxnResult | BaseException]
Apply = Callable[[list[Waiting]], Awaitable[Outcomes]]


def rolled_back(exc: BaseException) -> bool:
    """The server refused the call (so nothing of it was written): the batch can be retried one by one.
    A lost connection is not that: the commit may have happened."""
    import asyncpg

    return isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, asyncpg.PostgresConnectionError)


def flatten(batch: list[Waiting]) -> tuple[list[int], list[str], list[bytes | None], list[int], list[str], list[int]]:
    """A group as the batch functions take it: how many ops each write has, every op's key and value
    (None deletes), how many compares each has, every compare's key and revision."""
    keys: list[str] = []
    values: list[bytes | None] = []
    cmp_keys: list[str] = []
    cmp_revs: list[int] = []
    for item in batch:
        for op in item.ops:
            keys.append(op.key)
            values.append(op.value if isinstance(op, Put) else None)
        for compare in item.compares:
            cmp_keys.append(compare.key)
            cmp_revs.append(compare.mod_revision)
    return [len(item.ops) for item in batch], keys, values, [len(item.compares) for item in batch], cmp_keys, cmp_revs


class GroupCommit:
    """A queue of writes and the one task that sends them, a group per call, through ``apply``."""

    def __init__(self, apply: Apply, *, max_ops: int = MAX_BATCH_OPS) -> None:
        self.apply = apply
        self.max_ops = max_ops
        self.waiting: deque[Waiting] = deque()
        self.committer: asyncio.Task[None] | None = None

    async def submit(self, ops: Sequence[Op], compares: Sequence[Compare]) -> TxnResult:
        """Queue the write for the next call and wait for its outcome."""
        future: asyncio.Future[TxnResult] = asyncio.get_running_loop().create_future()
        self.waiting.append(Waiting(ops, compares, future))
        if self.committer is None or self.committer.done():
            self.committer = asyncio.create_task(self._commit_waiting(), name="mezzo-pg-commit")
        return await future

    async def drain(self) -> None:
        """Wait until the writes already queued are committed (or failed)."""
        if self.committer is not None:
            # wait, not await: a cancelled close() must not cancel the committer (and fail every
            # waiting writer), and a committer cancelled earlier must not stop the close
            await asyncio.wait([self.committer])
            self.committer = None

    async def _commit_waiting(self) -> None:
        batch: list[Waiting] = []
        try:
            while self.waiting:
                batch, count, size = [], 0, 0
                while self.waiting and len(batch) < MAX_BATCH and count < self.max_ops and size < MAX_BATCH_BYTES:
                    item = self.waiting.popleft()
                    if item.future.done():  # its caller gave up before it was sent: it is not written
                        continue
                    batch.append(item)
                    count += len(item.ops) + len(item.compares)
                    size += sum(len(op.value) for op in item.ops if isinstance(op, Put))
                if not batch:
                    continue
                try:
                    outcomes = await self.apply(batch)
                except Exception as exc:
                    if len(batch) > 1 and rolled_back(exc):  # one bad transaction must not fail the others
                        outcomes = [await self._apply_alone(item) for item in batch]
                    else:
                        outcomes = [exc] * len(batch)
                for item, outcome in zip(batch, outcomes, strict=True):
                    if item.future.done():  # its caller was cancelled; the write stands (or failed) regardless
                        continue
                    if isinstance(outcome, BaseException):
                        item.future.set_exception(outcome)
                    else:
                        item.future.set_result(outcome)
                batch = []
        finally:  # cancelled (the loop is closing): nobody may wait for ever
            for item in batch:  # sent: the server may have committed it
                if not item.future.done():
                    item.future.set_exception(StoreError("the store stopped while this write was in flight: "
                                                         "it may or may not have been committed"))
            for item in self.waiting:
                if not item.future.done():
                    item.future.set_exception(StoreError("the store closed before this write was sent"))
            self.waiting.clear()

    async def _apply_alone(self, item: Waiting) -> TxnResult | BaseException:
        if item.future.done():  # its caller gave up meanwhile, and the group it was sent in was refused
            return StoreError("cancelled before it was applied")
        try:
            return (await self.apply([item]))[0]
        except Exception as exc:
            return exc
