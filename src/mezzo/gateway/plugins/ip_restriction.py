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
        field = "whitelist" if self.whitelist else "blacklist"
        for block in self.whitelist or self.blacklist:
            try:
                ipaddress.ip_network(block, strict=False)
            except ValueError:
                raise ValueError(f"{field}: {block!r} is not an IP address or CIDR block") from None
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
        # an IPv4 client of a dual-stack listener is "::ffff:10.0.0.1": either form matches a block
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        forms = (address,) if mapped is None else (address, mapped)
        if self.allow and not any(form in net for net in self.allow for form in forms):
            return problem(403, self.conf.message)
        if self.deny and any(form in net for net in self.deny for form in forms):
            return problem(403, self.conf.message)
        return None
