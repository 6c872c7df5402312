"""The ``config`` module: the config service, its watch hub and routes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from mezzo.config.gray import GrayReleases
from mezzo.config.hub import ConfigHub
from mezzo.config.service import ConfigService
from mezzo.node.keyring import node_keyring
from mezzo.node.module import Health, Module
from mezzo.storage.kv import KVStore


class ConfigModule(Module):
    name = "config"

    async def start(self) -> None:
        self.service = ConfigService(self.node.service(KVStore), node_keyring(self.node))  # type: ignore[type-abstract]
        self.hub = ConfigHub(self.service)
        await self.hub.start()
        self.node.provide(ConfigService, self.service)
        self.node.provide(ConfigHub, self.hub)
        self.node.provide(GrayReleases, GrayReleases(self.service))
        self._drain = asyncio.create_task(self._end_waits_on_stop(), name="mezzo-config-drain")

    async def _end_waits_on_stop(self) -> None:
        """When the node starts draining, parked long polls answer and streams end at once
        (the hub itself stops only after the listeners have drained)."""
        await self.node.stopping.wait()
        self.hub.stopped = True
        self.hub._wake_all()

    async def stop(self) -> None:
        self._drain.cancel()
        await self.hub.stop()

    async def health(self) -> Health:
        task = self.hub._task
        ok = task is not None and not task.done()
        return Health(ok, f"{len(self.hub.metas)} namespaces, revision {self.hub.revision}")

    def routers(self) -> list[APIRouter]:
        from mezzo.config import apollo
        from mezzo.config.api import router

        return [router, apollo.keys, apollo.router]
