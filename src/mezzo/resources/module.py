"""The ``resources`` module: the declarative API every service's kinds go through."""

from __future__ import annotations

from fastapi import APIRouter

from mezzo.node.keyring import node_keyring
from mezzo.node.module import Health, Module
from mezzo.resources.catalog import KindCatalog
from mezzo.resources.service import ResourceService
from mezzo.storage.kv import KVStore


class ResourcesModule(Module):
    name = "resources"

    async def start(self) -> None:
        from mezzo.node.graph import all_kinds

        self.catalog = KindCatalog(all_kinds())
        self.service = ResourceService(self.node.service(KVStore), self.catalog,  # type: ignore[type-abstract]
                                       node_keyring(self.node))
        self.node.provide(ResourceService, self.service)

    async def health(self) -> Health:
        return Health(True, f"{len(self.catalog)} kinds")

    def routers(self) -> list[APIRouter]:
        from mezzo.resources.api import router

        return [router]
