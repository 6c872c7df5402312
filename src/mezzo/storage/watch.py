"""Engine-neutral watch: turns a store's event log and a change signal into ordered streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from mezzo.storage.kv import Event

EventsFn = Callable[[int, str, int], Awaitable[list[Event]]]


class ChangeSignal:
    """Wakes every waiter when the store's revision may have advanced.

    Waiters park on plain futures rather than ``asyncio.wait_for``: on Python 3.11, a cancel that
    lands as ``wait_for``'s inner wait completes is swallowed, and a watch task then never stops
    (seen with stores written many times a second).
    """

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.add(fut)
        timer = loop.call_later(timeout, _settle, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._waiters.discard(fut)


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


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


async def follow(store: Any, prefix: str, next_revision: Callable[[], int], apply: Callable[[Event], None],
                 reload: Callable[[], Awaitable[None]], what: str) -> None:
    """Keep an in-memory view current forever: apply every change under ``prefix`` from
    ``next_revision()``; reload the whole view when history was compacted or the watch failed
    (a failed watch may have stopped inside a revision, so re-reading is the safe way on)."""
    import logging

    from mezzo.storage.kv import CompactedError

    while True:
        try:
            async for event in store.watch(prefix, next_revision()):
                apply(event)
        except asyncio.CancelledError:
            raise
        except CompactedError:
            await reload()
        except Exception:
            logging.getLogger("mezzo.storage").exception("%s watch failed; reloading", what)
            await asyncio.sleep(1)
            with contextlib.suppress(Exception):
                await reload()
