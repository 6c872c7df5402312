"""Schema of the ``Resiliency`` kind: named timeout, retry and breaker policies, and their targets."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from mezzo.resilience.trip import TripCondition
from mezzo.resources.kinds import KindSpec
from mezzo.resources.types import Duration

PositiveDuration = Annotated[Duration, Field(gt=0)]
PolicyName = Annotated[str, StringConstraints(min_length=1, max_length=253)]

# What each target type names: gateway upstreams, messaging subscriptions and transaction
# branches. ``backends`` is parsed (so documents stored by an older Mezzo still load) but refused.
TARGET_TYPES = ("upstreams", "subscriptions", "branches", "backends")
TargetType = Literal["upstreams", "subscriptions", "branches", "backends"]

_CODES = re.compile(r"^(\d{3})(?:-(\d{3}))?$")


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class RetryMatching(_Model):
    """Which failures a retry policy retries; errors without an HTTP status are always retried."""

    http_status_codes: str | None = Field(
        None, description="comma-separated codes or ranges, e.g. '429,500-599'"
    )

    @field_validator("http_status_codes")
    @classmethod
    def _check_codes(cls, value: str | None) -> str | None:
        if value is not None:
            parse_status_codes(value)
        return value

    def status_codes(self) -> frozenset[int] | None:
        return (
            None if self.http_status_codes is None else parse_status_codes(self.http_status_codes)
        )


def parse_status_codes(text: str) -> frozenset[int]:
    """``"429,500-599"`` -> the set of those codes; raises ``ValueError`` naming the bad part."""
    codes: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        match = _CODES.match(part)
        low = int(match.group(1)) if match else 0
        high = int(match.group(2) or low) if match else 0
        if match is None or not 100 <= low <= high <= 599:
            raise ValueError(f"invalid HTTP status code or range {part!r}: use e.g. '429,500-599'")
        codes.update(range(low, high + 1))
    return frozenset(codes)


class RetryPolicySpec(_Model):
    """``constant``: wait ``duration`` (default 5s) between retries. ``exponential``: start at
    ``duration`` (default 500ms), x1.5 per retry with ±50% jitter, capped at ``maxInterval``."""

    policy: Literal["constant", "exponential"] = "constant"
    duration: Duration | None = None
    max_interval: PositiveDuration = 60.0
    max_retries: int = Field(-1, ge=-1, description="-1 retries forever, 0 never retries")
    matching: RetryMatching | None = None

    def delay(self) -> float:
        """The constant delay, or the first exponential delay."""
        if self.duration is not None:
            return self.duration
        return 5.0 if self.policy == "constant" else 0.5


class CircuitBreakerPolicySpec(_Model):
    """Trips on ``trip``; stays open ``timeout``; then lets ``maxRequests`` probes through."""

    max_requests: int = Field(1, ge=1, description="probes allowed while half-open")
    interval: Duration = Field(0.0, description="rolling window for ratios; 0 never clears")
    timeout: PositiveDuration = Field(60.0, description="how long the circuit stays open")
    trip: str = "consecutiveFailures > 5"
    min_calls: int = Field(10, ge=1, description="calls in the window before ratios count")
    slow_call_duration: PositiveDuration | None = None

    @field_validator("trip")
    @classmethod
    def _check_trip(cls, value: str) -> str:
        TripCondition.parse(value)
        return value

    @model_validator(mode="after")
    def _slow_calls_need_a_duration(self) -> CircuitBreakerPolicySpec:
        if self.condition().slow_call_ratio is not None and self.slow_call_duration is None:
            raise ValueError("slowCallDuration is required when trip uses slowCallRatio")
        return self

    def condition(self) -> TripCondition:
        return TripCondition.parse(self.trip)


class PoliciesSpec(_Model):
    timeouts: dict[PolicyName, PositiveDuration] = Field(default_factory=dict)
    retries: dict[PolicyName, RetryPolicySpec] = Field(default_factory=dict)
    circuit_breakers: dict[PolicyName, CircuitBreakerPolicySpec] = Field(default_factory=dict)


class TargetPolicies(_Model):
    """The policies one target uses, by name; each is optional."""

    timeout: PolicyName | None = None
    retry: PolicyName | None = None
    circuit_breaker: PolicyName | None = None


class TargetsSpec(_Model):
    upstreams: dict[str, TargetPolicies] = Field(default_factory=dict)
    subscriptions: dict[str, TargetPolicies] = Field(default_factory=dict)
    branches: dict[str, TargetPolicies] = Field(default_factory=dict)
    backends: dict[str, TargetPolicies] = Field(default_factory=dict)


class ResiliencySpec(_Model):
    """``spec`` of a ``Resiliency`` document; every target must name policies defined here."""

    policies: PoliciesSpec
    targets: TargetsSpec = Field(default_factory=TargetsSpec)

    @model_validator(mode="after")
    def _targets_name_defined_policies(self) -> ResiliencySpec:
        if self.targets.backends:
            raise ValueError(
                "spec.targets.backends: no Mezzo service applies policies to the engines it calls; each engine"
                " client keeps its own reconnects and timeouts (a generic retry around a publish or a store"
                " write could apply it twice). Target upstreams, subscriptions or branches instead"
            )
        defined = {
            ("timeout", "timeout"): self.policies.timeouts,
            ("retry", "retry"): self.policies.retries,
            ("circuit_breaker", "circuitBreaker"): self.policies.circuit_breakers,
        }
        problems = []
        for target_type in TARGET_TYPES:
            for target, uses in getattr(self.targets, target_type).items():
                for (attr, field), policies in defined.items():
                    name = getattr(uses, attr)
                    if name is not None and name not in policies:
                        known = ", ".join(sorted(policies)) or "none"
                        problems.append(
                            f"spec.targets.{target_type}.{target}.{field}: unknown {field} policy"
                            f" {name!r} (defined: {known})"
                        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def targets_of(self, target_type: str) -> dict[str, TargetPolicies]:
        if target_type not in TARGET_TYPES:
            raise ValueError(
                f"unknown target type {target_type!r}: use one of {', '.join(TARGET_TYPES)}"
            )
        targets: dict[str, TargetPolicies] = getattr(self.targets, target_type)
        return targets


RESILIENCY_KIND = KindSpec(
    kind="Resiliency",
    spec=ResiliencySpec,
    plural="resiliencies",
    short_names=("resiliency",),
    description="Named timeout, retry and circuit breaker policies, and the gateway upstreams,"
    " messaging subscriptions and transaction branches they apply to.",
)
