"""Engine-neutral watch: turns a store's event log and a change signal into ordered streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from mezzo.storage.kv import Event

EventsFn = Callable[[int, str, int], Awaitable[list[Event]]]


class ChangeSignal:
    """Wakes every waiter when the store's revision may have advanced."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


def whole_revisions(events: list[Event], limit: int) -> list[Event]:
    """Drop a trailing, possibly partial revision from a page that hit ``limit``."""
    if len(events) < limit or not events:
        return events
    last = events[-1].revision
    trimmed = [e for e in events if e.revision != last]
    return trimmed


async def watch_events(
    events: EventsFn,
    signal: ChangeSignal,
    prefix: str,
    start: int,
    poll_interval: float,
    page: int = 1000,
) -> AsyncIterator[Event]:
    """Yield every event under ``prefix`` from revision ``start`` on, in order, forever.

    ``events(start, prefix, limit)`` must return whole revisions only (or, when
    one revision alone exceeds the limit, that revision complete).
    CompactedError from ``events`` propagates to the caller.
    """
    next_rev = start
    while True:
        batch = await events(next_rev, prefix, page)
        if batch:
            for event in batch:
                yield event
            next_rev = batch[-1].revision + 1
            continue
        await signal.wait(poll_interval)


async def watch_store(
    store: Any, signal: ChangeSignal | None, prefix: str, start: int | None, poll_interval: float
) -> AsyncIterator[Event]:
    """``KVStore.watch`` for any store with ``events`` and ``revision``: from ``start`` or from now."""
    if signal is None:
        raise RuntimeError("store is not open")
    first = start if start is not None else (await store.revision())[0] + 1
    async for event in watch_events(store.events, signal, prefix, first, poll_interval):
        yield event
