"""ip-restriction: allow or deny clients by address or CIDR block."""

from __future__ import annotations

import ipaddress

from pydantic import Field, model_validator

from mezzo.gateway.http import Reply, problem
from mezzo.gateway.plugins import Config, Ctx, Plugin, register


class IpRestrictionConfig(Config):
    whitelist: list[str] = Field(default_factory=list)
    blacklist: list[str] = Field(default_factory=list)
    message: str = "Your IP address is not allowed"

    @model_validator(mode="after")
    def _one(self) -> IpRestrictionConfig:
        if bool(self.whitelist) == bool(self.blacklist):
            raise ValueError("give either whitelist or blacklist")
        for block in self.whitelist + self.blacklist:
            ipaddress.ip_network(block, strict=False)
        return self


@register
class IpRestriction(Plugin):
    name = "ip-restriction"
    priority = 3000
    schema = IpRestrictionConfig

    def __init__(self, conf: IpRestrictionConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.allow = [ipaddress.ip_network(b, strict=False) for b in conf.whitelist]
        self.deny = [ipaddress.ip_network(b, strict=False) for b in conf.blacklist]

    def access(self, ctx: Ctx) -> Reply | None:
        try:
            address = ipaddress.ip_address(ctx.request.client_ip)
        except ValueError:
            return problem(403, self.conf.message)
        if self.allow and not any(address in net for net in self.allow):
            return problem(403, self.conf.message)
        if self.deny and any(address in net for net in self.deny):
            return problem(403, self.conf.message)
        return None
