"""The ``store`` module: opens the KV store the settings name and compacts its history."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from mezzo.node.module import Health, Module
from mezzo.storage import open_store
from mezzo.storage.kv import KVStore
from mezzo.storage.sqlite import SQLiteStore

log = structlog.get_logger("mezzo.store")
COMPACT_EVERY = 60.0


class StoreModule(Module):
    name = "store"

    async def start(self) -> None:
        settings = self.node.settings
        if settings.store_url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store: KVStore = open_store(settings.store_url)
        await self.store.open()
        self.node.provide(KVStore, self.store)  # type: ignore[type-abstract]
        self._compactor = asyncio.create_task(self._compact_forever(), name="mezzo-compactor")

    async def stop(self) -> None:
        self._compactor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._compactor
        await self.store.close()

    async def health(self) -> Health:
        ok = await self.store.ready()
        engine = "sqlite" if isinstance(self.store, SQLiteStore) else "postgresql"
        return Health(ok, engine if ok else f"{engine} store is not answering")

    async def compact_once(self) -> None:
        current, compacted = await self.store.revision()
        target = current - self.node.settings.store_history
        if target > compacted:
            await self.store.compact(target)
            log.info("store compacted", revision=target)

    async def _compact_forever(self) -> None:
        while True:
            await asyncio.sleep(COMPACT_EVERY)
            try:
                await self.compact_once()
            except Exception:
                log.exception("store compaction failed")
