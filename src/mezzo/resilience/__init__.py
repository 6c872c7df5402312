"""Resilience primitives every Mezzo service uses, and the declarative ``Resiliency`` kind."""

from mezzo.resilience.breaker import (
    BreakerStats,
    CircuitBreaker,
    CircuitState,
    Permit,
)
from mezzo.resilience.bulkhead import Bulkhead
from mezzo.resilience.errors import (
    BulkheadFullError,
    CircuitOpenError,
    ResilienceError,
    TimeoutExceeded,
)
from mezzo.resilience.model import (
    RESILIENCY_KIND,
    TARGET_TYPES,
    CircuitBreakerPolicySpec,
    PoliciesSpec,
    ResiliencySpec,
    RetryMatching,
    RetryPolicySpec,
    TargetPolicies,
    TargetsSpec,
)
from mezzo.resilience.policies import NOOP_POLICY, PolicyRegistry, ResiliencePolicy
from mezzo.resilience.ratelimit import (
    FixedWindow,
    RateLimitDecision,
    RateLimiter,
    SlidingWindow,
    TokenBucket,
)
from mezzo.resilience.ratelimit_redis import RedisFixedWindow, RedisSlidingWindow, RedisTokenBucket
from mezzo.resilience.retry import Retry
from mezzo.resilience.timeout import deadline, with_timeout
from mezzo.resilience.trip import TripCondition

__all__ = [
    "NOOP_POLICY",
    "RESILIENCY_KIND",
    "TARGET_TYPES",
    "BreakerStats",
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitBreakerPolicySpec",
    "CircuitOpenError",
    "CircuitState",
    "FixedWindow",
    "Permit",
    "PoliciesSpec",
    "PolicyRegistry",
    "RateLimitDecision",
    "RateLimiter",
    "RedisFixedWindow",
    "RedisSlidingWindow",
    "RedisTokenBucket",
    "ResilienceError",
    "ResiliencePolicy",
    "ResiliencySpec",
    "Retry",
    "RetryMatching",
    "RetryPolicySpec",
    "SlidingWindow",
    "TargetPolicies",
    "TargetsSpec",
    "TimeoutExceeded",
    "TokenBucket",
    "TripCondition",
    "deadline",
    "with_timeout",
]
