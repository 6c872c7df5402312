"""traffic-split: send a share of a route's traffic, or the requests that match conditions, to other upstreams.

``rules`` are tried in order; the first whose ``match`` holds (any of its groups; every expression
of a group; no ``match`` at all always holds) picks one of its ``weightedUpstreams`` by weight. An
entry without ``upstream`` is the route's own upstream. Requests no rule takes go to the route's
upstream. Canary: weights only. Blue-green and A/B: a ``match`` on a header, argument or cookie.
Expressions are APISIX's ``[var, op, value]`` (``[var, "!", op, value]`` negates), with ``op`` one of
``==  ~=  >  >=  <  <=  ~~`` (regex) ``~*`` (regex, any case) ``in  has``. With ``sticky:
{key: header|cookie|arg|remote_addr|consumer, keyName}`` the same value always gets the same pick
among the weights (a request without it is spread by weight); otherwise entries take turns by
weight (smooth weighted round robin).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from pydantic import Field, field_validator, model_validator

from mezzo.gateway.http import Reply, problem
from mezzo.gateway.plugins import Config, Ctx, Plugin, register
from mezzo.gateway.plugins.keys import KeyedConfig, request_key
from mezzo.gateway.plugins.vars import getter
from mezzo.resources.types import Name

OPERATORS = ("==", "~=", ">", ">=", "<", "<=", "~~", "~*", "in", "has")
Test = Callable[[Any], bool]


class WeightedUpstream(Config):
    upstream: Name | None = Field(None, description="an Upstream in the route's namespace; none: the route's own")
    upstream_id: Name | None = Field(None, description="APISIX's spelling of upstream")
    weight: int = Field(1, ge=0)

    @property
    def target(self) -> str | None:
        return self.upstream or self.upstream_id


class MatchGroup(Config):
    vars: list[list[Any]] = Field(min_length=1)

    @field_validator("vars")
    @classmethod
    def _compiles(cls, value: list[list[Any]]) -> list[list[Any]]:
        for expression in value:
            compile_expression(expression)
        return value


class Rule(Config):
    match: list[MatchGroup] = Field(default_factory=list)
    weighted_upstreams: list[WeightedUpstream] = Field(min_length=1)

    @model_validator(mode="after")
    def _weights(self) -> Rule:
        if not any(w.weight for w in self.weighted_upstreams):
            raise ValueError("weightedUpstreams need a weight above 0")
        return self


class TrafficSplitConfig(Config):
    rules: list[Rule] = Field(default_factory=list)
    sticky: KeyedConfig | None = Field(None, description="{key, keyName} as in the limit plugins: the same value, "
                                                         "the same pick")


def compile_expression(expression: list[Any]) -> Test:
    """``[var, op, value]`` or ``[var, "!", op, value]`` as a test of a request's ``Ctx``."""
    negate = len(expression) == 4 and expression[1] == "!"
    parts = [expression[0], *expression[2:]] if negate else expression
    if len(parts) != 3 or not isinstance(parts[0], str) or parts[1] not in OPERATORS:
        raise ValueError(f"an expression is [var, op, value] with op one of {' '.join(OPERATORS)}: {expression!r}")
    name, op, expected = parts
    read = getter(name)
    test: Callable[[str | None], bool]
    if op in ("~~", "~*"):
        try:
            pattern = re.compile(str(expected), re.IGNORECASE if op == "~*" else 0)
        except re.error as exc:
            raise ValueError(f"invalid regex in {expression!r}: {exc}") from None
        test = lambda v: v is not None and pattern.search(v) is not None  # noqa: E731
    elif op in (">", ">=", "<", "<="):
        bound = _number(expected)
        if bound is None:
            raise ValueError(f"{op} needs a number: {expression!r}")
        compare = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}[op]
        test = lambda v: (n := _number(v)) is not None and compare(n, bound)  # noqa: E731
    elif op == "in":
        if not isinstance(expected, list):
            raise ValueError(f"in needs a list: {expression!r}")
        members = {str(e) for e in expected}
        test = lambda v: v in members  # noqa: E731
    elif op == "has":
        test = lambda v: v is not None and str(expected) in [p.strip() for p in v.split(",")]  # noqa: E731
    else:
        text = str(expected)
        test = (lambda v: v == text) if op == "==" else (lambda v: v != text)
    if negate:
        return lambda ctx: not test(read(ctx))
    return lambda ctx: test(read(ctx))


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class _Choice:
    """A rule's weighted upstreams: smooth weighted round robin, or a hash into the weights."""

    def __init__(self, entries: list[WeightedUpstream]) -> None:
        self.targets = [e.target for e in entries if e.weight > 0]
        self.weights = [e.weight for e in entries if e.weight > 0]
        self.current = [0] * len(self.targets)
        self.total = sum(self.weights)

    def next(self) -> str | None:
        best = 0
        for i, weight in enumerate(self.weights):
            self.current[i] += weight
            if self.current[i] > self.current[best]:
                best = i
        self.current[best] -= self.total
        return self.targets[best]

    def by_hash(self, value: str) -> str | None:
        point = int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big") % self.total
        for target, weight in zip(self.targets, self.weights, strict=True):
            if point < weight:
                return target
            point -= weight
        return self.targets[-1]


@register
class TrafficSplit(Plugin):
    name = "traffic-split"
    priority = 966
    schema = TrafficSplitConfig

    def __init__(self, conf: TrafficSplitConfig, runtime) -> None:  # type: ignore[no-untyped-def]
        super().__init__(conf, runtime)
        self.rules = [([[compile_expression(e) for e in group.vars] for group in rule.match], _Choice(rule.weighted_upstreams))
                      for rule in conf.rules]

    def access(self, ctx: Ctx) -> Reply | None:
        for groups, choice in self.rules:
            if groups and not any(all(test(ctx) for test in group) for group in groups):
                continue
            sticky = self._sticky(ctx)
            target = choice.by_hash(sticky) if sticky else choice.next()
            if target is None:
                return None  # the route's own upstream
            balancer = ctx.runtime.snapshot.upstreams.get(f"{ctx.route.namespace}/{target}")
            if balancer is None:
                return problem(502, f"traffic-split: upstream {target!r} does not exist")
            ctx.upstream = balancer
            return None
        return None

    def _sticky(self, ctx: Ctx) -> str | None:
        sticky = self.conf.sticky
        if sticky is None:
            return None
        return request_key(ctx, sticky.key, sticky.key_name) or None
