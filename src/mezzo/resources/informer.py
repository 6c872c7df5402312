"""Keep an in-memory view of one kind current: list, then watch; re-list when history was compacted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from mezzo.resources.model import Resource
from mezzo.resources.service import ResourceService
from mezzo.storage.kv import CompactedError

log = structlog.get_logger("mezzo.resources")

Handler = Callable[[str, Resource], Awaitable[None] | None]  # ("ADDED"|"MODIFIED"|"DELETED", resource)


class Informer:
    """Calls ``handler`` for every current resource of ``kind`` and then for every change.

    After a re-list, resources that vanished meanwhile are reported as DELETED,
    so the handler's view always converges to the store's.
    """

    def __init__(self, resources: ResourceService, kind: str, handler: Handler) -> None:
        self.resources = resources
        self.kind = kind
        self.handler = handler
        self.items: dict[str, Resource] = {}
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        revision = await self._relist()
        self._task = asyncio.create_task(self._follow(revision + 1), name=f"mezzo-informer-{self.kind}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _emit(self, event: str, resource: Resource) -> None:
        try:
            result = self.handler(event, resource)
            if result is not None:
                await result
        except Exception:
            log.exception("resource handler failed", kind=self.kind, resource=resource.ref, change=event)

    async def _relist(self) -> int:
        items, revision = await self.resources.list(self.kind)
        fresh = {r.ref: r for r in items}
        for ref, gone in list(self.items.items()):
            if ref not in fresh:
                await self._emit("DELETED", gone)
        for ref, res in fresh.items():
            old = self.items.get(ref)
            if old is None or old.metadata.resourceVersion != res.metadata.resourceVersion:
                await self._emit("MODIFIED" if old else "ADDED", res)
        self.items = fresh
        self.synced.set()
        return revision

    async def _follow(self, start: int | None) -> None:
        """Apply every change from ``start``; re-list (``start`` None) after compaction or a failed
        watch, and keep trying until a re-list succeeds: this loop ends only when cancelled."""
        while True:
            try:
                if start is None:
                    start = await self._relist() + 1
                async for event in self.resources.watch(self.kind, None, start):
                    if event.type == "DELETED":
                        self.items.pop(event.resource.ref, None)
                    else:
                        self.items[event.resource.ref] = event.resource
                    await self._emit(event.type, event.resource)
                    start = event.revision + 1
            except CompactedError:
                start = None
            except asyncio.CancelledError:
                raise
            except Exception:
                # A failed watch may have stopped inside a revision: re-list so nothing is skipped.
                log.exception("resource watch failed; re-listing", kind=self.kind)
                start = None
                await asyncio.sleep(1)
