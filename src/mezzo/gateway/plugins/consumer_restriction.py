"""consumer-restriction: allow or deny authenticated consumers by name or by group (consumer ACLs).

Runs after the auth plugins. ``type: consumer_name`` matches the consumer's name (or
``namespace/name``); ``consumer_group_id`` matches any of the consumer's ``groups``. A request
with no consumer gets 401; a consumer the lists refuse gets ``rejectedCode`` (403).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mezzo.gateway.http import Reply
from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.auth import unauthorized
from mezzo.gateway.plugins.reject import reject


class AllowedByMethods(Config):
    user: str = Field(min_length=1, description="a consumer name")
    methods: list[str] = Field(min_length=1)


class ConsumerRestrictionConfig(Config):
    type: Literal["consumer_name", "consumer_group_id"] = "consumer_name"
    whitelist: list[str] = Field(default_factory=list)
    blacklist: list[str] = Field(default_factory=list)
    allowed_by_methods: list[AllowedByMethods] = Field(default_factory=list,
                                                       description="consumers allowed only these methods")
    rejected_code: int = Field(403, ge=200, le=599)
    rejected_msg: str = "The consumer is forbidden."

    @model_validator(mode="after")
    def _some(self) -> ConsumerRestrictionConfig:
        if not (self.whitelist or self.blacklist or self.allowed_by_methods):
            raise ValueError("give whitelist, blacklist or allowedByMethods")
        return self


@register
class ConsumerRestriction(Plugin):
    name = "consumer-restriction"
    priority = 2400
    schema = ConsumerRestrictionConfig

    def __init__(self, conf: ConsumerRestrictionConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.allow = frozenset(conf.whitelist)
        self.deny = frozenset(conf.blacklist)
        self.methods = {m.user: frozenset(x.upper() for x in m.methods) for m in conf.allowed_by_methods}

    def access(self, ctx: Ctx) -> Reply | None:
        consumer = ctx.consumer
        if consumer is None:
            return unauthorized("Missing authentication or identity verification.", 'Bearer realm="mezzo"')
        if self.conf.type == "consumer_name":
            values = {consumer.name, consumer.ref}
        else:
            values = set(consumer.spec.groups)
        if (self.allow and not values & self.allow) or values & self.deny:
            return self._reject()
        allowed = self.methods.get(consumer.name) or self.methods.get(consumer.ref)
        if allowed is not None and ctx.request.method not in allowed:
            return self._reject()
        return None

    def _reject(self) -> Reply:
        return reject(self.conf.rejected_code, self.conf.rejected_msg)
