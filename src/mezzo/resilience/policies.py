"""Applied ``Resiliency`` documents turned into ready-to-run policies, one per target."""

from __future__ import annotations

import asyncio
import logging
import random as _random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from mezzo.resilience.breaker import CircuitBreaker, StateListener
from mezzo.resilience.errors import CircuitOpenError
from mezzo.resilience.model import (
    TARGET_TYPES,
    CircuitBreakerPolicySpec,
    ResiliencySpec,
    RetryPolicySpec,
    TargetPolicies,
)
from mezzo.resilience.retry import Retry, SleepFn
from mezzo.resilience.timeout import with_timeout

P = ParamSpec("P")
T = TypeVar("T")
log = logging.getLogger(__name__)
ChangeListener = Callable[[str], None]


class ResiliencePolicy:
    """Runs calls under retry -> circuit breaker -> timeout, outermost first (Dapr's order).

    Each attempt gets its own timeout; a timed-out attempt counts as a breaker failure and is
    retried. ``CircuitOpenError`` ends the retries at once (as in Dapr): retrying a call the
    breaker refuses only burns attempts. Callers that cannot hand over a coroutine (the gateway
    data plane) may use ``retry``, ``breaker`` and ``timeout`` directly.
    """

    __slots__ = ("breaker", "name", "retry", "timeout")

    def __init__(
        self,
        name: str = "noop",
        *,
        timeout: float | None = None,
        retry: Retry | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.retry = retry
        self.breaker = breaker

    @property
    def is_noop(self) -> bool:
        return self.timeout is None and self.retry is None and self.breaker is None

    async def execute(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        if self.retry is None:
            return await self._attempt(fn, args, kwargs)
        return await self.retry.call(self._attempt, fn, args, kwargs)

    async def _attempt(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        if self.breaker is None:
            return await self._timed(fn, args, kwargs)
        return await self.breaker.call(self._timed, fn, args, kwargs)

    async def _timed(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        if self.timeout is None:
            return await fn(*args, **kwargs)
        return await with_timeout(lambda: fn(*args, **kwargs), self.timeout)


NOOP_POLICY = ResiliencePolicy()


def status_code_of(error: BaseException) -> int | None:
    """The HTTP status an error carries as ``status_code`` or ``response.status_code``, if any."""
    for holder in (error, getattr(error, "response", None)):
        code = getattr(holder, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def build_retry(
    spec: RetryPolicySpec,
    *,
    sleep: SleepFn = asyncio.sleep,
    random: Callable[[], float] = _random.random,
    clock: Callable[[], float] = time.monotonic,
) -> Retry:
    codes = spec.matching.status_codes() if spec.matching is not None else None

    def retry_on(error: BaseException) -> bool:
        if isinstance(error, CircuitOpenError):
            return False
        status = status_code_of(error)
        return codes is None or status is None or status in codes

    if spec.policy == "constant":
        return Retry.constant(
            spec.delay(),
            spec.max_retries,
            retry_on=retry_on,
            sleep=sleep,
            random=random,
            clock=clock,
        )
    return Retry.exponential(
        spec.delay(),
        spec.max_interval,
        spec.max_retries,
        retry_on=retry_on,
        sleep=sleep,
        random=random,
        clock=clock,
    )


def build_breaker(
    name: str,
    spec: CircuitBreakerPolicySpec,
    *,
    clock: Callable[[], float] = time.monotonic,
    on_state_change: StateListener | None = None,
) -> CircuitBreaker:
    return CircuitBreaker(
        name,
        trip=spec.condition(),
        open_duration=spec.timeout,
        half_open_max_calls=spec.max_requests,
        window=spec.interval,
        min_calls=spec.min_calls,
        slow_call_duration=spec.slow_call_duration,
        on_state_change=on_state_change,
        clock=clock,
    )


@dataclass(frozen=True, slots=True)
class _Source:
    """Which document (and which revision of it) decides a target's policies."""

    document: str
    revision: int
    spec: ResiliencySpec = field(compare=False)  # (document, revision) already identify it
    uses: TargetPolicies = field(compare=False)


class PolicyRegistry:
    """Holds the applied ``Resiliency`` documents and answers ``policy_for(type, name)``.

    Precedence: when several documents in a namespace name the same target, the document
    whose name sorts first wins, for all of that target's policies (no merging). Name order,
    unlike apply order, is the same on every node and after every restart.

    A target's circuit breaker lives as long as the document revision that defines it:
    ``policy_for`` returns the same policy (and breaker) until that document changes or
    another document takes the target over. Re-applying an identical spec changes nothing.

    Callers that resolve policies ahead of time (the gateway, at snapshot build) ``subscribe``
    to hear of changes; ``version`` counts them.
    """

    def __init__(
        self,
        *,
        sleep: SleepFn = asyncio.sleep,
        random: Callable[[], float] = _random.random,
        clock: Callable[[], float] = time.monotonic,
        on_breaker_state_change: StateListener | None = None,
    ) -> None:
        self._sleep = sleep
        self._random = random
        self._clock = clock
        self._on_breaker_state_change = on_breaker_state_change
        self._revision = 0
        self._documents: dict[str, dict[str, tuple[int, ResiliencySpec]]] = {}
        self._index: dict[str, dict[tuple[str, str], _Source]] = {}
        self._policies: dict[tuple[str, str, str], tuple[_Source, ResiliencePolicy]] = {}
        self._listeners: list[ChangeListener] = []
        self.version = 0  # bumped by every change that may give a target other policies

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Call ``listener(namespace)`` after each change of that namespace's documents; returns
        the unsubscribe function. A listener that raises is logged, never the applier's problem."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def apply(self, namespace: str, name: str, spec: ResiliencySpec) -> None:
        documents = self._documents.setdefault(namespace, {})
        current = documents.get(name)
        if current is not None and current[1] == spec:
            return
        self._revision += 1
        documents[name] = (self._revision, spec)
        self._reindex(namespace)

    def remove(self, namespace: str, name: str) -> bool:
        """Forget a document; returns whether it was there."""
        if self._documents.get(namespace, {}).pop(name, None) is None:
            return False
        self._reindex(namespace)
        return True

    def policy_for(
        self, target_type: str, target_name: str, namespace: str = "default"
    ) -> ResiliencePolicy:
        if target_type not in TARGET_TYPES:
            raise ValueError(
                f"unknown target type {target_type!r}: use one of {', '.join(TARGET_TYPES)}"
            )
        key = (namespace, target_type, target_name)
        cached = self._policies.get(key)
        if cached is not None:
            return cached[1]
        source = self._index.get(namespace, {}).get((target_type, target_name))
        if source is None:
            return NOOP_POLICY
        policy = self._build(key, source)
        self._policies[key] = (source, policy)
        return policy

    def circuit_breakers(self) -> list[CircuitBreaker]:
        """Every live breaker, e.g. for a metrics collector."""
        return [p.breaker for _, p in self._policies.values() if p.breaker is not None]

    def _reindex(self, namespace: str) -> None:
        index: dict[tuple[str, str], _Source] = {}
        for document, (revision, spec) in sorted(self._documents.get(namespace, {}).items()):
            for target_type in TARGET_TYPES:
                for target, uses in spec.targets_of(target_type).items():
                    index.setdefault((target_type, target), _Source(document, revision, spec, uses))
        self._index[namespace] = index
        for key, (source, _) in list(self._policies.items()):
            if key[0] == namespace and index.get(key[1:]) != source:
                del self._policies[key]
        self.version += 1
        for listener in list(self._listeners):
            try:
                listener(namespace)
            except Exception:
                log.exception("resiliency change listener failed")

    def _build(self, key: tuple[str, str, str], source: _Source) -> ResiliencePolicy:
        policies, uses = source.spec.policies, source.uses
        name = "/".join(key)
        retry = breaker = None
        if uses.retry is not None:
            retry = build_retry(
                policies.retries[uses.retry],
                sleep=self._sleep,
                random=self._random,
                clock=self._clock,
            )
        if uses.circuit_breaker is not None:
            breaker = build_breaker(
                name,
                policies.circuit_breakers[uses.circuit_breaker],
                clock=self._clock,
                on_state_change=self._on_breaker_state_change,
            )
        timeout = policies.timeouts[uses.timeout] if uses.timeout is not None else None
        return ResiliencePolicy(name, timeout=timeout, retry=retry, breaker=breaker)
