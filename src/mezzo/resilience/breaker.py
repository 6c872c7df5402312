"""Circuit breaker: stop calling a dependency that keeps failing, then probe it back to health."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import ParamSpec, TypeVar

from mezzo.resilience.errors import CircuitOpenError
from mezzo.resilience.retry import RetryOn, as_predicate
from mezzo.resilience.trip import TripCondition

P = ParamSpec("P")
T = TypeVar("T")
log = logging.getLogger(__name__)


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Permit:
    """Proof that ``allow()`` admitted a call; hand it back to ``record_*`` or ``release``."""

    generation: int
    probe: bool


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A snapshot for metrics; window counts cover the rolling window in the closed state."""

    name: str
    state: CircuitState
    consecutive_failures: int
    window_calls: int
    window_failures: int
    window_slow_calls: int
    times_opened: int
    rejected: int


class _Window:
    """Call, failure and slow-call counts over a rolling window of ``buckets`` slices."""

    __slots__ = ("_buckets", "_size", "_width")

    def __init__(self, seconds: float, buckets: int = 10) -> None:
        self._width = seconds / buckets if seconds > 0 else 0.0  # 0: counts never expire
        self._size = buckets
        self._buckets: deque[list[int]] = deque()  # [slice index, calls, failures, slow]

    def add(self, now: float, failed: bool, slow: bool) -> None:
        index = self._expire(now)
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append([index, 0, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += failed
        bucket[3] += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        self._expire(now)
        buckets = self._buckets
        return sum(b[1] for b in buckets), sum(b[2] for b in buckets), sum(b[3] for b in buckets)

    def clear(self) -> None:
        self._buckets.clear()

    def _expire(self, now: float) -> int:
        index = int(now // self._width) if self._width else 0
        while self._buckets and self._buckets[0][0] <= index - self._size:
            self._buckets.popleft()
        return index


StateListener = Callable[["CircuitBreaker", CircuitState, CircuitState], None]
_ENTERED: ContextVar[tuple[tuple[int, Permit, float], ...]] = ContextVar(
    "mezzo_breaker_entered", default=()
)


class CircuitBreaker:
    """Closed: calls pass and outcomes are counted. Open: calls fail fast with ``CircuitOpenError``.

    After ``open_duration`` the circuit is half-open: ``half_open_max_calls`` probes may run;
    when that many succeed it closes, and any failing probe re-opens it. A probe counts as
    failed if it raises a failure, or if it is slow and the trip condition watches slow calls.
    Exceptions not matched by ``failure_on`` mean the dependency answered: they count as
    successes. ``window`` is the rolling window (seconds) for the ratios; ``0`` keeps counting
    until the state changes. Ratios are only judged once ``min_calls`` calls are in the window.
    """

    def __init__(
        self,
        name: str = "default",
        *,
        trip: TripCondition | str = TripCondition(),
        open_duration: float = 60.0,
        half_open_max_calls: int = 1,
        window: float = 0.0,
        min_calls: int = 10,
        slow_call_duration: float | None = None,
        failure_on: RetryOn = Exception,
        on_state_change: StateListener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.trip = TripCondition.parse(trip) if isinstance(trip, str) else trip
        if self.trip.slow_call_ratio is not None and slow_call_duration is None:
            raise ValueError("a slowCallRatio trip needs slow_call_duration")
        if half_open_max_calls < 1 or min_calls < 1:
            raise ValueError("half_open_max_calls and min_calls must be at least 1")
        self.open_duration = open_duration
        self.half_open_max_calls = half_open_max_calls
        self.min_calls = min_calls
        self.slow_call_duration = slow_call_duration
        self.on_state_change = on_state_change
        self._is_failure = as_predicate(failure_on)
        self._clock = clock
        self._window = _Window(window)
        self._state = CircuitState.CLOSED
        self._generation = 0
        self._opened_at = 0.0
        self._consecutive_failures = 0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._times_opened = 0
        self._rejected = 0

    @property
    def state(self) -> CircuitState:
        self._refresh(self._clock())
        return self._state

    def stats(self) -> BreakerStats:
        now = self._clock()
        self._refresh(now)
        calls, failures, slow = self._window.totals(now)
        return BreakerStats(
            self.name,
            self._state,
            self._consecutive_failures,
            calls,
            failures,
            slow,
            self._times_opened,
            self._rejected,
        )

    def allow(self) -> Permit:
        """Admit one call or raise ``CircuitOpenError``; report its outcome with the permit."""
        now = self._clock()
        self._refresh(now)
        if self._state is CircuitState.CLOSED:
            return Permit(self._generation, probe=False)
        if (
            self._state is CircuitState.HALF_OPEN
            and self._probes_in_flight + self._probe_successes < self.half_open_max_calls
        ):
            self._probes_in_flight += 1
            return Permit(self._generation, probe=True)
        self._rejected += 1
        retry_after = 0.0  # half-open with every probe slot taken: a probe verdict is near
        if self._state is CircuitState.OPEN:
            retry_after = max(0.0, self._opened_at + self.open_duration - now)
        raise CircuitOpenError(self.name, retry_after)

    def record_success(self, duration: float = 0.0, permit: Permit | None = None) -> None:
        self._record(False, duration, permit)

    def record_failure(self, duration: float = 0.0, permit: Permit | None = None) -> None:
        self._record(True, duration, permit)

    def release(self, permit: Permit) -> None:
        """Give back a permit without an outcome (the call was cancelled)."""
        if permit.probe and permit.generation == self._generation and self._probes_in_flight:
            self._probes_in_flight -= 1

    def reset(self) -> None:
        """Force the circuit closed with fresh counts (an operator's override)."""
        self._transition(CircuitState.CLOSED, self._clock())

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        async with self:
            return await fn(*args, **kwargs)

    async def __aenter__(self) -> CircuitBreaker:
        permit = self.allow()
        _ENTERED.set((*_ENTERED.get(), (id(self), permit, self._clock())))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit, started = self._pop_entry()
        duration = self._clock() - started
        if exc is None or (isinstance(exc, Exception) and not self._is_failure(exc)):
            self.record_success(duration, permit)
        elif isinstance(exc, Exception):
            self.record_failure(duration, permit)
        else:  # cancelled or exiting: no verdict on the dependency
            self.release(permit)

    def _pop_entry(self) -> tuple[Permit, float]:
        entries = _ENTERED.get()
        for i in range(len(entries) - 1, -1, -1):
            if entries[i][0] == id(self):
                _ENTERED.set(entries[:i] + entries[i + 1 :])
                return entries[i][1], entries[i][2]
        raise RuntimeError("CircuitBreaker.__aexit__ without a matching __aenter__")

    def _record(self, failed: bool, duration: float, permit: Permit | None) -> None:
        now = self._clock()
        self._refresh(now)
        if permit is not None and permit.generation != self._generation:
            return  # admitted under an earlier state: its verdict is stale
        slow = self.slow_call_duration is not None and duration >= self.slow_call_duration
        if self._state is CircuitState.CLOSED:
            self._window.add(now, failed, slow)
            self._consecutive_failures = self._consecutive_failures + 1 if failed else 0
            if self._should_trip(now):
                self._transition(CircuitState.OPEN, now)
        elif self._state is CircuitState.HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)
            if failed or (slow and self.trip.slow_call_ratio is not None):
                self._transition(CircuitState.OPEN, now)
                return
            self._probe_successes += 1
            if self._probe_successes >= self.half_open_max_calls:
                self._transition(CircuitState.CLOSED, now)

    def _should_trip(self, now: float) -> bool:
        trip = self.trip
        if (
            trip.consecutive_failures is not None
            and self._consecutive_failures > trip.consecutive_failures
        ):
            return True
        if trip.error_ratio is None and trip.slow_call_ratio is None:
            return False
        calls, failures, slow = self._window.totals(now)
        if calls < self.min_calls:
            return False
        if trip.error_ratio is not None and failures / calls > trip.error_ratio:
            return True
        return trip.slow_call_ratio is not None and slow / calls > trip.slow_call_ratio

    def _refresh(self, now: float) -> None:
        if self._state is CircuitState.OPEN and now >= self._opened_at + self.open_duration:
            self._transition(CircuitState.HALF_OPEN, now)

    def _transition(self, new: CircuitState, now: float) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._consecutive_failures = self._probes_in_flight = self._probe_successes = 0
        self._window.clear()
        if new is CircuitState.OPEN:
            self._opened_at = now
            self._times_opened += 1
        if self.on_state_change is not None and old is not new:
            try:
                self.on_state_change(self, old, new)
            except Exception:  # a metrics hook must never break the call path
                log.exception("circuit %s: state listener failed", self.name)
