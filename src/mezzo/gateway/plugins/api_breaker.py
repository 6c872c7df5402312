"""api-breaker: a circuit breaker per route, with APISIX's semantics.

Every upstream response whose status is in ``unhealthy.httpStatuses`` counts a failure (and
clears the healthy count); at each ``unhealthy.failures``-th failure the circuit opens: for
``2^ceil(failures so far / unhealthy.failures)`` seconds from then (2, 4, 8 ... up to
``maxBreakerSec``) the route answers ``breakResponseCode`` without calling the upstream. When
the period is over, requests go through again (half-open); a failure then lengthens the period
(still counted from when the circuit opened), and ``healthy.successes`` responses in a row with a
status in ``healthy.httpStatuses`` close the circuit and reset the counts. A connection failure
(502/504 without a response) counts as that status. State is per route, in this process.
"""

from __future__ import annotations

import math
import time

from pydantic import Field

from mezzo.gateway.http import Reply
from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.reject import reject

clock = time.monotonic  # tests replace it
UPSTREAM_STATUS = "upstream_status"  # ctx.vars: the status the upstream answered, before any rewrite


class Unhealthy(Config):
    http_statuses: list[int] = Field(default_factory=lambda: [500], min_length=1)
    failures: int = Field(3, ge=1)


class Healthy(Config):
    http_statuses: list[int] = Field(default_factory=lambda: [200], min_length=1)
    successes: int = Field(3, ge=1)


class Header(Config):
    key: str = Field(min_length=1)
    value: str


class ApiBreakerConfig(Config):
    break_response_code: int = Field(ge=200, le=599)
    break_response_body: str | None = None
    break_response_headers: list[Header] = Field(default_factory=list)
    max_breaker_sec: int = Field(300, ge=3)
    unhealthy: Unhealthy = Field(default_factory=Unhealthy)
    healthy: Healthy = Field(default_factory=Healthy)


class _Circuit:
    __slots__ = ("healthy", "opened", "unhealthy")

    def __init__(self) -> None:
        self.unhealthy = 0
        self.healthy = 0
        self.opened: float | None = None  # when the threshold was last reached


@register
class ApiBreaker(Plugin):
    name = "api-breaker"
    priority = 1005
    schema = ApiBreakerConfig

    def __init__(self, conf: ApiBreakerConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.circuits: dict[str, _Circuit] = {}  # by route
        self.bad = frozenset(conf.unhealthy.http_statuses)
        self.good = frozenset(conf.healthy.http_statuses)

    def access(self, ctx: Ctx) -> Reply | None:
        circuit = self.circuits.get(ctx.route.ref)
        if circuit is None or circuit.opened is None:
            return None
        conf = self.conf
        now = clock()
        if now - circuit.opened >= conf.max_breaker_sec:
            circuit.opened = None  # APISIX lets the open mark expire after maxBreakerSec
            return None
        period = min(2.0 ** max(math.ceil(circuit.unhealthy / conf.unhealthy.failures), 1), conf.max_breaker_sec)
        if now >= circuit.opened + period:
            return None  # half-open: let requests through and count their answers
        left = max(1, math.ceil(circuit.opened + period - now))
        if conf.break_response_body is not None:
            reply = Reply(conf.break_response_code, conf.break_response_body, content_type="text/plain")
        else:
            reply = reject(conf.break_response_code, "the circuit breaker of this route is open")
        for header in conf.break_response_headers:
            reply.headers[header.key.lower()] = header.value
        reply.headers.setdefault("retry-after", str(left))
        return reply

    def header_filter(self, ctx: Ctx, headers: list[tuple[bytes, bytes]]) -> None:
        ctx.vars.setdefault(UPSTREAM_STATUS, ctx.status)

    def log(self, ctx: Ctx) -> None:
        status = ctx.vars.get(UPSTREAM_STATUS)
        if status is None:
            if ctx.node is None or ctx.error is None or ctx.status not in (502, 504):
                return  # the upstream was not asked (a plugin answered, the client went away)
            status = ctx.status
        ref = ctx.route.ref
        circuit = self.circuits.get(ref)
        if status in self.bad:
            if circuit is None:
                circuit = self.circuits[ref] = _Circuit()
            circuit.unhealthy += 1
            circuit.healthy = 0
            if circuit.unhealthy % self.conf.unhealthy.failures == 0:
                circuit.opened = clock()
        elif status in self.good and circuit is not None and circuit.unhealthy:
            circuit.healthy += 1
            if circuit.healthy >= self.conf.healthy.successes:
                del self.circuits[ref]
