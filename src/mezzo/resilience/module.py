"""The ``resilience`` module: keeps the node's PolicyRegistry in step with applied Resiliency resources."""

from __future__ import annotations

import structlog

from mezzo.node.module import Health, Module
from mezzo.resilience.model import RESILIENCY_KIND, ResiliencySpec
from mezzo.resilience.policies import PolicyRegistry
from mezzo.resources.informer import Informer
from mezzo.resources.model import Resource
from mezzo.resources.service import ResourceService

log = structlog.get_logger("mezzo.resilience")


class ResilienceModule(Module):
    name = "resilience"
    kinds = (RESILIENCY_KIND,)

    async def start(self) -> None:
        self.registry = PolicyRegistry()
        self.node.provide(PolicyRegistry, self.registry)
        self.informer = Informer(self.node.service(ResourceService), RESILIENCY_KIND.kind, self._on_change)
        await self.informer.start()

    async def stop(self) -> None:
        await self.informer.stop()

    def _on_change(self, event: str, resource: Resource) -> None:
        meta = resource.metadata
        if event == "DELETED":
            self.registry.remove(meta.namespace, meta.name)
        else:
            spec = dict(resource.spec)
            targets = dict(spec.get("targets") or {})
            if targets.pop("backends", None):  # stored by an older Mezzo, where it was accepted and did nothing
                log.warning("Resiliency targets.backends ignored: no service applies them", resource=resource.ref)
                spec["targets"] = targets
            self.registry.apply(meta.namespace, meta.name, ResiliencySpec.model_validate(spec))

    async def health(self) -> Health:
        return Health(self.informer.synced.is_set(), f"{len(self.informer.items)} Resiliency resources")
