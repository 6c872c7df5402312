"""Engine-neutral watch: turns a store's event log and a change signal into ordered streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

from mezzo.storage.kv import Event

EventsFn = Callable[[int, str, int], Awaitable[list[Event]]]
_MAX_KEYS = 64  # a change to more keys wakes every watch rather than matching each against each


class ChangeSignal:
    """Wakes the watches parked on a store when its revision may have advanced.

    Each store has one, fed by its own writes and by one change detector that looks for writes made
    elsewhere (another process on the same SQLite file, another node on PostgreSQL), so a watch
    queries only after a change instead of polling on its own. ``generation`` counts notifications:
    a watch reads it before it queries and parks only if nothing was notified since, so a change
    committed while its query ran is never slept through. When the changed keys are known, only
    the watches whose prefix one of them starts with wake.

    Waiters park on plain futures rather than ``asyncio.wait_for``: on Python 3.11, a cancel that
    lands as ``wait_for``'s inner wait completes is swallowed, and a watch task then never stops
    (seen with stores written many times a second).
    """

    def __init__(self, revision: int = 0) -> None:
        self.generation = 0
        self.revision = revision  # the newest revision waiters were woken for
        self._waiters: dict[asyncio.Future[None], str] = {}  # parked watch -> its prefix

    def advance(self, revision: int, keys: Collection[str] | None = None, since: int | None = None) -> None:
        """Wake waiters if ``revision`` is newer than any they were woken for (writers and detectors
        both report, so a local write is not announced twice). ``keys`` changed in the revisions
        after ``since``; they narrow the wake-up only if no revision before those went unreported."""
        if revision <= self.revision:
            return
        narrow = keys is not None and since == self.revision and len(keys) <= _MAX_KEYS
        self.revision = revision
        self.notify(keys if narrow else None)

    def notify(self, keys: Collection[str] | None = None) -> None:
        self.generation += 1
        if keys is None:
            waiters, self._waiters = self._waiters, {}
        else:
            waiters = {f: p for f, p in self._waiters.items() if any(k.startswith(p) for k in keys)}
            for fut in waiters:
                del self._waiters[fut]
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(self, generation: int, prefix: str = "") -> None:
        """Return once something under ``prefix`` was notified after ``generation`` was read."""
        if generation != self.generation:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[fut] = prefix
        try:
            await fut
        finally:
            self._waiters.pop(fut, None)


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
    page: int = 1000,
) -> AsyncIterator[Event]:
    """Yield every event under ``prefix`` from revision ``start`` on, in order, forever.

    ``events(start, prefix, limit)`` must return whole revisions only (or, when
    one revision alone exceeds the limit, that revision complete). Between changes the watch
    sleeps on ``signal`` and runs no query.
    CompactedError from ``events`` propagates to the caller.
    """
    next_rev = start
    while True:
        generation = signal.generation
        batch = await events(next_rev, prefix, page)
        if batch:
            for event in batch:
                yield event
            next_rev = batch[-1].revision + 1
            continue
        await signal.wait(generation, prefix)


async def watch_store(store: Any, signal: ChangeSignal | None, prefix: str, start: int | None) -> AsyncIterator[Event]:
    """``KVStore.watch`` for any store with ``events`` and ``revision``: from ``start`` or from now."""
    if signal is None:
        raise RuntimeError("store is not open")
    first = start if start is not None else (await store.revision())[0] + 1
    async for event in watch_events(store.events, signal, prefix, first):
        yield event


async def follow(store: Any, prefix: str, next_revision: Callable[[], int], apply: Callable[[Event], None],
                 reload: Callable[[], Awaitable[None]], what: str) -> None:
    """Keep an in-memory view current forever: apply every change under ``prefix`` from
    ``next_revision()``; reload the whole view when history was compacted or the watch failed
    (a failed watch may have stopped inside a revision, so re-reading is the safe way on)."""
    import logging

    from mezzo.storage.kv import CompactedError

    stale = False  # the view must be reloaded before watching on
    while True:
        try:
            if stale:
                await reload()
                stale = False
            async for event in store.watch(prefix, next_revision()):
                apply(event)
        except asyncio.CancelledError:
            raise
        except CompactedError:
            stale = True
        except Exception:  # a failed watch or reload: try again, and never stop following
            logging.getLogger("mezzo.storage").exception("%s watch failed; reloading", what)
            stale = True
            await asyncio.sleep(1)
