"""The ``registry`` module: the registry service, its view, membership, checks, expiry and routes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import httpx
import structlog
from fastapi import APIRouter

from mezzo.node.module import Health, Module
from mezzo.registry.checks import Checker
from mezzo.registry.expiry import Reaper
from mezzo.registry.members import Membership
from mezzo.registry.metrics import RegistryMetrics
from mezzo.registry.service import RegistryService
from mezzo.registry.view import RegistryView
from mezzo.storage.kv import KVStore
from mezzo.telemetry.metrics import Metrics

log = structlog.get_logger("mezzo.registry")


class RegistryModule(Module):
    name = "registry"

    async def start(self) -> None:
        metrics = RegistryMetrics(self.node.service(Metrics) if self.node.has(Metrics) else None)
        self.service = RegistryService(self.node.service(KVStore), metrics)  # type: ignore[type-abstract]
        self.view = RegistryView(self.service)
        await self.view.start()
        metrics.count_instances(self._counts)
        self.members = Membership(self.service, self.view)
        await self.members.start()
        self.http = httpx.AsyncClient(headers={"User-Agent": "mezzo-registry-check"},
                                      limits=httpx.Limits(max_connections=500, max_keepalive_connections=100))
        self.checker = Checker(self.service, self.view, self.members, self.http, metrics)
        self.reaper = Reaper(self.service, self.view, self.members)
        self._tasks = [asyncio.create_task(_forever(self.reaper.run), name="mezzo-registry-reaper"),
                       asyncio.create_task(_forever(self.checker.run), name="mezzo-registry-checks")]
        self.node.provide(RegistryService, self.service)
        self.node.provide(RegistryView, self.view)
        self.node.provide(Membership, self.members)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.members.stop()
        await self.view.stop()
        await self.http.aclose()

    async def health(self) -> Health:
        if not self.view.following:
            return Health(False, "registry watch stopped: this node's view would go stale")
        if any(task.done() for task in self._tasks):
            return Health(False, "registry expiry or checks stopped")
        services = self.view.all_services()
        return Health(True, f"{len(services)} services, {self.checker.running} checks on this node, "
                            f"{len(self.members.live())} members")

    def routers(self) -> list[APIRouter]:
        from mezzo.registry.api import router

        return [router]

    def _counts(self) -> Iterator[tuple[str, str, str, int]]:
        for namespace, service in self.view.all_services():
            instances = self.view.instances(namespace, service, healthy_only=False)
            passing = sum(i.passing for i in instances)
            yield namespace, service, "passing", passing
            yield namespace, service, "critical", len(instances) - passing


async def _forever(run: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Keep a background loop alive: a bug in one round is logged, not fatal to the registry."""
    while True:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("registry background loop failed; restarting")
            await asyncio.sleep(1)
