"""limit-count: at most ``count`` requests per ``window`` per key, locally or cluster-wide through Redis.

``policy: local`` counts in this process; ``policy: redis`` counts in Redis with one atomic script
per request, so the limit holds exactly across every gateway node. With ``degrade: open`` a
Redis outage lets requests through (logged); with ``closed`` they get 503. Every answer carries
``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``; a rejected request
gets ``rejectedCode`` (429) with ``Retry-After``.
"""

from __future__ import annotations

import math
from time import monotonic
from typing import Literal

import structlog
from pydantic import Field, model_validator

from mezzo.gateway.http import Reply, problem
from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.reject import reject
from mezzo.gateway.plugins.shared_redis import require_redis_url
from mezzo.resilience.ratelimit import FixedWindow, RateLimitDecision, SlidingWindow
from mezzo.resources.types import Duration

log = structlog.get_logger("mezzo.gateway")

_REMOTE_ADDR, _CONSUMER, _OTHER = 0, 1, 2  # how the fixed path finds a request's key
_BY = {"remote_addr": _REMOTE_ADDR, "consumer": _CONSUMER}


class LimitCountConfig(Config):
    count: int = Field(ge=1)
    window: Duration = Field(gt=0, description="e.g. 60s")
    key: Literal["remote_addr", "consumer", "route", "header", "arg", "cookie"] = "remote_addr"
    key_name: str | None = Field(None, description="the header, argument or cookie for key header/arg/cookie")
    algorithm: Literal["fixed", "sliding"] = "fixed"
    policy: Literal["local", "redis"] = "local"
    redis_url: str | None = Field(None, description="default: the node's MEZZO_CACHE when it is redis://")
    degrade: Literal["open", "closed"] = "open"
    redis_timeout: Duration = Field(1.0, gt=0, le=60, description="Redis connect and command timeout, then "
                                    "degrade applies (APISIX's redis_timeout: 1s)")
    rejected_code: int = Field(429, ge=200, le=599)
    rejected_msg: str = "Too Many Requests"
    show_headers: bool = True

    @model_validator(mode="after")
    def _redis_reachable(self) -> LimitCountConfig:
        # refused at apply time on a node without Redis, rather than a route left out at load
        if self.policy == "redis":
            require_redis_url(self.redis_url, "policy redis")
        return self

    @model_validator(mode="after")
    def _key_name(self) -> LimitCountConfig:
        if self.key in ("header", "arg", "cookie") and not self.key_name:
            raise ValueError(f"key {self.key} needs keyName")
        return self


@register
class LimitCount(Plugin):
    name = "limit-count"
    priority = 1002
    schema = LimitCountConfig
    secret_urls = ("redis_url",)  # redis://:password@host: sealed at rest

    def __init__(self, conf: LimitCountConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.local = (SlidingWindow if conf.algorithm == "sliding" else FixedWindow)(conf.count, conf.window)
        self.remote = None
        self.client = None
        if conf.policy == "redis":
            url = conf.redis_url or getattr(runtime, "redis_url", None)
            if not url:
                raise ValueError("limit-count policy redis needs redisUrl (or MEZZO_CACHE=redis://...)")
            import redis.asyncio as aioredis

            from mezzo.resilience.ratelimit_redis import RedisFixedWindow, RedisSlidingWindow

            self.client = aioredis.from_url(url, socket_timeout=conf.redis_timeout,
                                            socket_connect_timeout=conf.redis_timeout)
            limiter = RedisSlidingWindow if conf.algorithm == "sliding" else RedisFixedWindow
            self.remote = limiter(self.client, conf.count, conf.window, prefix="mezzo:gw:limit:")
        self.fixed = _FixedCounts(conf.count, conf.window) if conf.algorithm == "fixed" else None
        self.limit_header = (b"x-ratelimit-limit", b"%d" % conf.count)
        # the fixed path's per-request reads, out of the configuration once
        self.count = conf.count
        self.show = conf.show_headers
        self.by = _BY.get(conf.key, _OTHER)
        # X-RateLimit-Reset as last sent, and the (lo, hi] of seconds-to-reset it stands for: its
        # bytes change once a second, not per request
        self._reset: tuple[bytes, bytes] = (b"x-ratelimit-reset", b"0")
        self._reset_lo = self._reset_hi = 0
        # a local limit decides without a task switch; the chain sees a sync access phase
        if self.remote is not None:
            self.access = self._access_remote  # type: ignore[method-assign]
        elif self.fixed is not None:
            self.access = self._access_fixed  # type: ignore[method-assign]
        else:
            self.access = self._access_local  # type: ignore[method-assign]

    def _value(self, ctx: Ctx) -> str:
        conf = self.conf
        request = ctx.request
        if conf.key == "consumer":
            value = ctx.consumer.ref if ctx.consumer is not None else request.client_ip
        elif conf.key == "route":
            value = ""
        elif conf.key == "header":
            value = request.header(conf.key_name.lower().encode("latin-1")) or ""  # type: ignore[union-attr]
        elif conf.key == "arg":
            value = request.args.get(conf.key_name, "")  # type: ignore[arg-type]
        elif conf.key == "cookie":
            value = request.cookies.get(conf.key_name, "")  # type: ignore[arg-type]
        else:
            value = request.client_ip
        return value  # type: ignore[no-any-return]

    def _key(self, ctx: Ctx) -> str:
        """The key in a limiter shared with other instances (Redis): prefixed with the plugin's scope."""
        return f"{getattr(self, 'scope', '')}|{self._value(ctx)}"

    def access(self, ctx: Ctx) -> Reply | None:  # replaced per instance in __init__
        return self._access_local(ctx)

    def _access_local(self, ctx: Ctx) -> Reply | None:
        return self._verdict(ctx, self.local.try_acquire(self._key(ctx)))

    def _access_fixed(self, ctx: Ctx) -> Reply | None:
        """The common case, local fixed windows: plain ints and header bytes, no decision object."""
        by = self.by
        if by == _CONSUMER:
            consumer = ctx.consumer
            key = consumer.ref if consumer is not None else ctx.request.client_ip
        elif by == _REMOTE_ADDR:
            key = ctx.request.client_ip
        else:
            key = self._value(ctx)
        now = monotonic()
        fixed: _FixedCounts = self.fixed  # type: ignore[assignment]
        count = self.count
        counts = fixed.counts
        used = counts.get(key)
        if used is not None and used < count and now < fixed.ends:
            used += 1  # a key seen in this window, under its limit: _FixedCounts.take's commonest way
            counts[key] = used
        else:
            used = fixed.take(key, now)
        if self.show:
            left = fixed.ends - now
            if not self._reset_lo < left <= self._reset_hi:  # then ceil(left) is _reset_hi, as sent last
                hi = math.ceil(left)
                self._reset = (b"x-ratelimit-reset", b"%d" % hi)
                self._reset_lo, self._reset_hi = hi - 1, hi
            ctx.response_headers += (self.limit_header,
                                     (b"x-ratelimit-remaining", b"%d" % (count - used if used <= count else 0)),
                                     self._reset)
        if used <= count:
            return None
        conf = self.conf
        reply = reject(conf.rejected_code, conf.rejected_msg)
        reply.headers["retry-after"] = str(max(1, math.ceil(fixed.ends - now)))
        return reply

    async def _access_remote(self, ctx: Ctx) -> Reply | None:
        key = self._key(ctx)
        try:
            decision = await self.remote.acquire(key)  # type: ignore[union-attr]
        except Exception as exc:
            if self.conf.degrade == "open":
                log.warning("limit-count: redis unavailable, letting the request through", error=str(exc))
                return None
            return problem(503, "rate limiter unavailable")
        return self._verdict(ctx, decision)

    def _verdict(self, ctx: Ctx, decision: RateLimitDecision) -> Reply | None:
        if self.conf.show_headers:
            for name, value in decision.headers().items():
                if name != "Retry-After":
                    ctx.response_headers.append((name.lower().encode(), value.encode()))
        if decision.allowed:
            return None
        reply = reject(self.conf.rejected_code, self.conf.rejected_msg)
        reply.headers["retry-after"] = decision.headers()["Retry-After"]
        return reply

    def close(self) -> None:
        if self.client is not None:
            import asyncio

            try:
                asyncio.get_running_loop().create_task(self.client.aclose())
            except RuntimeError:
                pass


class _FixedCounts:
    """Requests per key in the current window ``[k * window, (k + 1) * window)`` of the monotonic clock.

    The counts are one dict of ints, dropped whole when the next window begins; at most ``max_keys``
    keys (the oldest key of the window goes first: it starts again at 0, as a key never seen)."""

    __slots__ = ("counts", "ends", "limit", "max_keys", "window")

    def __init__(self, limit: int, window: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.counts: dict[str, int] = {}
        self.ends = 0.0  # when the current window ends

    def take(self, key: str, now: float) -> int:
        """Count one request of ``key`` if the limit allows; the key's count, ``limit + 1`` when refused."""
        if now >= self.ends:
            self.counts.clear()
            self.ends = (now // self.window + 1) * self.window
        counts = self.counts
        used = counts.get(key)
        if used is None:
            if len(counts) >= self.max_keys:
                del counts[next(iter(counts))]
            used = 0
        if used >= self.limit:
            return self.limit + 1
        used += 1
        counts[key] = used
        return used
