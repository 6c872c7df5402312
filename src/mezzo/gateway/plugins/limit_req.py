"""limit-req: a leaky bucket per key (nginx's limit_req): ``rate`` requests a second, ``burst`` more queued.

A request that finds the bucket holding ``excess`` requests beyond the rate waits ``excess / rate``
seconds before it goes on, so requests leave at the rate; with ``nodelay`` those within the burst go
at once. A request that would overflow the burst gets ``rejectedCode`` (429) with ``Retry-After``.
Buckets are kept in this process (at most ``MAX_KEYS`` keys, the least recently used dropped first).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict

from pydantic import Field

from mezzo.gateway.http import Reply
from mezzo.gateway.plugins import Ctx, Plugin, register
from mezzo.gateway.plugins.keys import KeyedConfig, request_key
from mezzo.gateway.plugins.reject import reject

MAX_KEYS = 100_000
clock = time.monotonic  # tests replace it
sleep = asyncio.sleep


class LimitReqConfig(KeyedConfig):
    rate: float = Field(gt=0, description="requests per second")
    burst: float = Field(0.0, ge=0, description="requests over the rate that are delayed (or let through, nodelay)")
    nodelay: bool = Field(False, description="requests within the burst go at once instead of at the rate")
    rejected_code: int = Field(429, ge=200, le=599)
    rejected_msg: str = "Too Many Requests"


class LeakyBucket:
    """nginx's limit_req arithmetic: per key, the excess over the rate and when it was measured."""

    def __init__(self, rate: float, burst: float, max_keys: int = MAX_KEYS) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.states: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (excess, at)

    def take(self, key: str, now: float) -> tuple[float, float]:
        """(delay, 0) when the request is taken: it should wait ``delay`` seconds; (-1, retry_after)
        when it would overflow the burst (nothing is counted then)."""
        state = self.states.get(key)
        excess = 0.0
        if state is not None:
            excess = max(state[0] - self.rate * max(now - state[1], 0.0) + 1.0, 0.0)
            if excess > self.burst:
                return -1.0, (excess - self.burst) / self.rate
            self.states.move_to_end(key)
        self.states[key] = (excess, now)
        if len(self.states) > self.max_keys:
            self.states.popitem(last=False)
        return excess / self.rate, 0.0


@register
class LimitReq(Plugin):
    name = "limit-req"
    priority = 1001
    schema = LimitReqConfig

    def __init__(self, conf: LimitReqConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.bucket = LeakyBucket(conf.rate, conf.burst)
        # without a burst to delay (or with nodelay) no request ever waits: decide without a task switch
        if conf.nodelay or conf.burst == 0:
            self.access = self._access_now  # type: ignore[method-assign]

    def _verdict(self, ctx: Ctx) -> float | Reply:
        delay, retry_after = self.bucket.take(request_key(ctx, self.conf.key, self.conf.key_name), clock())
        if delay < 0:
            reply = reject(self.conf.rejected_code, self.conf.rejected_msg)
            reply.headers["retry-after"] = str(max(1, math.ceil(retry_after)))
            return reply
        return delay

    def _access_now(self, ctx: Ctx) -> Reply | None:
        verdict = self._verdict(ctx)
        return verdict if isinstance(verdict, Reply) else None

    async def access(self, ctx: Ctx) -> Reply | None:
        verdict = self._verdict(ctx)
        if isinstance(verdict, Reply):
            return verdict
        if verdict >= 0.001:
            ctx.vars["limit_req_delay"] = verdict
            await sleep(verdict)
        return None

