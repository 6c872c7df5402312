"""limit-conn: at most ``conn`` requests in flight per key, ``burst`` more delayed, the rest refused.

As APISIX (lua-resty-limit-conn): a request that finds ``conn`` or more in flight but no more than
``conn + burst`` waits ``defaultConnDelay × floor((in flight - 1) / conn)`` seconds, then goes on; the
delay unit follows the average request time unless ``onlyUseDefaultDelay``. Over ``conn + burst``
it gets ``rejectedCode`` (429; 503 as APISIX's default if you prefer) with ``Retry-After``. A request
counts from its access phase until its log phase, i.e. until the response is out. Counts are kept
in this process.
"""

from __future__ import annotations

import asyncio
import math
import time

from pydantic import Field

from mezzo.gateway.http import Reply
from mezzo.gateway.plugins import Ctx, Plugin, register
from mezzo.gateway.plugins.keys import KeyedConfig, request_key
from mezzo.gateway.plugins.reject import reject
from mezzo.resources.types import Duration

sleep = asyncio.sleep  # tests replace it


class LimitConnConfig(KeyedConfig):
    conn: int = Field(ge=1, description="requests in flight per key")
    burst: int = Field(0, ge=0, description="more requests in flight that are delayed instead of refused")
    default_conn_delay: Duration = Field(0.1, gt=0, description="the delay unit for requests in the burst")
    only_use_default_delay: bool = Field(False, description="keep the unit fixed instead of following latency")
    rejected_code: int = Field(429, ge=200, le=599)
    rejected_msg: str = "Too Many Requests"


@register
class LimitConn(Plugin):
    name = "limit-conn"
    priority = 1003
    schema = LimitConnConfig

    def __init__(self, conf: LimitConnConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.counts: dict[str, int] = {}  # only keys with requests in flight
        self.unit_delay = conf.default_conn_delay
        self.mark = f"limit_conn:{id(self)}"  # in ctx.vars: the key this request counts against
        if conf.burst == 0:  # nothing is ever delayed: decide without a task switch
            self.access = self._access_now  # type: ignore[method-assign]

    def _enter(self, ctx: Ctx) -> float | Reply:
        conf = self.conf
        key = request_key(ctx, conf.key, conf.key_name)
        count = self.counts.get(key, 0) + 1
        if count > conf.conn + conf.burst:
            reply = reject(conf.rejected_code, conf.rejected_msg)
            reply.headers["retry-after"] = str(max(1, math.ceil(self.unit_delay)))
            return reply
        self.counts[key] = count
        ctx.vars[self.mark] = key
        return self.unit_delay * ((count - 1) // conf.conn) if count > conf.conn else 0.0

    def _access_now(self, ctx: Ctx) -> Reply | None:
        entered = self._enter(ctx)
        return entered if isinstance(entered, Reply) else None

    async def access(self, ctx: Ctx) -> Reply | None:
        entered = self._enter(ctx)
        if isinstance(entered, Reply):
            return entered
        if entered >= 0.001:
            ctx.vars["limit_conn_delay"] = entered
            await sleep(entered)
        return None

    def log(self, ctx: Ctx) -> None:
        key = ctx.vars.pop(self.mark, None)
        if key is None:
            return  # refused, or stopped before this plugin counted it
        left = self.counts.get(key, 1) - 1
        if left > 0:
            self.counts[key] = left
        else:
            self.counts.pop(key, None)
        if not self.conf.only_use_default_delay:
            self.unit_delay = (self.unit_delay + (time.monotonic() - ctx.started)) / 2
