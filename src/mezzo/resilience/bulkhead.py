"""Bulkhead: cap how many calls run at once, with a bounded, time-limited FIFO queue behind it."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import ParamSpec, TypeVar

from mezzo.resilience.errors import BulkheadFullError

P = ParamSpec("P")
T = TypeVar("T")


class Bulkhead:
    """At most ``max_concurrent`` calls inside; up to ``max_queue`` more wait in arrival order.

    A call that finds every slot busy and the queue full, or that waits longer than
    ``queue_timeout`` seconds (``None``: no limit), gets ``BulkheadFullError``.
    Use ``async with bulkhead:`` or ``await bulkhead.call(fn, *args)``.
    """

    def __init__(
        self,
        max_concurrent: int,
        max_queue: int = 0,
        queue_timeout: float | None = None,
        *,
        name: str = "default",
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if max_queue < 0:
            raise ValueError("max_queue cannot be negative")
        if queue_timeout is not None and queue_timeout <= 0:
            raise ValueError("queue_timeout must be positive (or None to wait forever)")
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.rejected = 0

    @property
    def active(self) -> int:
        """Calls inside the bulkhead now."""
        return self._active

    @property
    def queued(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._waiters)  # only pending waiters stay in the deque

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if allowed; pair every success with ``release()``."""
        if self._active < self.max_concurrent and not self._waiters:
            self._active += 1
            return
        if self.queued >= self.max_queue:
            self.rejected += 1
            reason = (
                "all slots busy" if self.max_queue == 0 else "all slots busy and the queue is full"
            )
            raise BulkheadFullError(self.name, reason)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as we gave up: pass it on
            else:
                waiter.cancel()
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                self.rejected += 1
                raise BulkheadFullError(
                    self.name, f"waited {self.queue_timeout:g}s for a slot"
                ) from None
            raise

    def release(self) -> None:
        """Free a slot, handing it straight to the oldest waiter if there is one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter; _active is unchanged
                return
        self._active -= 1

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        async with self:
            return await fn(*args, **kwargs)

    async def __aenter__(self) -> Bulkhead:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
