"""The module graph: every module a node can run and the modules it needs. The one place to read it."""

from __future__ import annotations

from dataclasses import dataclass

from mezzo.cache.module import CacheModule
from mezzo.config.module import ConfigModule
from mezzo.gateway.apis_module import ApisModule
from mezzo.gateway.module import GatewayModule
from mezzo.messaging.module import MessagingModule
from mezzo.node.api import ApiModule
from mezzo.node.auth_module import AuthModule
from mezzo.node.module import Module
from mezzo.registry.module import RegistryModule
from mezzo.resilience.module import ResilienceModule
from mezzo.resources.module import ResourcesModule
from mezzo.storage.module import StoreModule
from mezzo.telemetry.module import TelemetryModule
from mezzo.tracing.module import TracingModule
from mezzo.transactions.module import TransactionsModule


@dataclass(frozen=True, slots=True)
class ModuleDef:
    cls: type[Module]
    needs: tuple[str, ...] = ()


MODULES: dict[str, ModuleDef] = {
    "telemetry": ModuleDef(TelemetryModule),
    "store": ModuleDef(StoreModule, ("telemetry",)),
    "auth": ModuleDef(AuthModule, ("store",)),
    "resources": ModuleDef(ResourcesModule, ("store", "auth")),
    "resilience": ModuleDef(ResilienceModule, ("resources",)),
    "messaging": ModuleDef(MessagingModule, ("store", "resources", "resilience")),
    "config": ModuleDef(ConfigModule, ("store", "auth")),
    "registry": ModuleDef(RegistryModule, ("store", "auth")),
    "gateway": ModuleDef(GatewayModule, ("store", "resources", "resilience")),
    "apis": ModuleDef(ApisModule, ("gateway", "resources")),
    "tracing": ModuleDef(TracingModule, ("telemetry", "auth", "resources")),  # its sampling policies are resources
    "cache": ModuleDef(CacheModule, ("telemetry", "auth", "resources")),
    "transactions": ModuleDef(TransactionsModule, ("store", "auth", "telemetry", "resilience")),
    "api": ModuleDef(ApiModule, ("telemetry", "auth", "resources")),
}

# Named sets of modules; any single module name is a target too.
TARGETS: dict[str, tuple[str, ...]] = {
    "all": tuple(MODULES),
}


class TargetError(ValueError):
    pass


def resolve(targets: list[str]) -> list[str]:
    """The modules to run for ``targets`` with everything they need, in start order."""
    wanted: list[str] = []
    for target in targets:
        if target in TARGETS:
            wanted.extend(TARGETS[target])
        elif target in MODULES:
            wanted.append(target)
        else:
            known = ", ".join([*TARGETS, *MODULES])
            raise TargetError(f"unknown target {target!r}; known targets: {known}")
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise TargetError(f"module dependency cycle through {name!r}")
        visiting.add(name)
        for need in MODULES[name].needs:
            visit(need)
        visiting.discard(name)
        order.append(name)

    for name in sorted(set(wanted), key=list(MODULES).index):
        visit(name)
    return order


def all_kinds():  # type: ignore[no-untyped-def]
    """Every kind of every module, enabled or not: any node can validate any manifest."""
    return [kind for d in MODULES.values() for kind in d.cls.kinds]
