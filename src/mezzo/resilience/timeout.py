"""Time limits for awaitables that raise ``TimeoutExceeded`` carrying the limit."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from mezzo.resilience.errors import TimeoutExceeded

T = TypeVar("T")


def _check(seconds: float | None) -> None:
    if seconds is not None and seconds <= 0:
        raise ValueError(f"a timeout must be positive, got {seconds!r}")


@asynccontextmanager
async def deadline(seconds: float | None) -> AsyncIterator[None]:
    """``async with deadline(2.0):`` cancels the block after ``seconds``; ``None`` means no limit.

    Only the expiry of this scope becomes ``TimeoutExceeded``; a ``TimeoutError`` raised by
    the block itself (or by an inner scope) passes through unchanged.
    """
    _check(seconds)
    if seconds is None:
        yield
        return
    scope = asyncio.timeout(seconds)
    try:
        async with scope:
            yield
    except TimeoutError as exc:
        if scope.expired():
            raise TimeoutExceeded(seconds) from exc
        raise


async def with_timeout(call: Awaitable[T] | Callable[[], Awaitable[T]], seconds: float | None) -> T:
    """Await ``call`` (an awaitable, or a no-argument function returning one) within ``seconds``."""
    try:
        _check(seconds)
    except ValueError:
        if inspect.iscoroutine(call):
            call.close()  # never awaited: close it so Python does not warn
        raise
    awaitable = call() if callable(call) else call
    async with deadline(seconds):
        return await awaitable
