"""fault-injection: abort a share of requests with a status, or delay them, to test resilience."""

from __future__ import annotations

import asyncio
import random

from pydantic import Field, model_validator

from mezzo.gateway.http import Reply
from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.resources.types import Duration


class Abort(Config):
    http_status: int = Field(ge=200, le=599)
    body: str = ""
    percentage: int = Field(100, ge=0, le=100)


class Delay(Config):
    duration: Duration = Field(gt=0)
    percentage: int = Field(100, ge=0, le=100)


class FaultInjectionConfig(Config):
    abort: Abort | None = None
    delay: Delay | None = None

    @model_validator(mode="after")
    def _some(self) -> FaultInjectionConfig:
        if self.abort is None and self.delay is None:
            raise ValueError("give abort, delay or both")
        return self


@register
class FaultInjection(Plugin):
    name = "fault-injection"
    priority = 11000
    schema = FaultInjectionConfig

    async def rewrite(self, ctx: Ctx) -> Reply | None:
        delay = self.conf.delay
        if delay is not None and random.randrange(100) < delay.percentage:
            await asyncio.sleep(delay.duration)
        abort = self.conf.abort
        if abort is not None and random.randrange(100) < abort.percentage:
            return Reply(abort.http_status, abort.body)
        return None
